;; hostile_import: a module that imports a host function. The ABI has no host functions, so the
;; deploy is rejected ("module imports env.host_log; modules must import nothing").
(module
  (import "env" "host_log" (func $host_log (param i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  ;; alloc(len) -> ptr: bump allocation from 1024, growing memory as needed (fresh instance per call).
  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $p i32) (local $need i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $len)))
    (local.set $need (i32.sub (i32.shr_u (i32.add (global.get $heap) (i32.const 65535)) (i32.const 16)) (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (if (i32.eq (memory.grow (local.get $need)) (i32.const -1)) (then unreachable))))
    (local.get $p))
  (func (export "reduce") (param $p i32) (param $n i32) (result i64)
    (call $host_log (local.get $p) (local.get $n))
    (i64.const 0))
)
