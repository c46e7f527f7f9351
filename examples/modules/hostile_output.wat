;; hostile_output: a reducer that claims a 16 MiB output (ptr 0, len 0x1000000), far above any
;; max_output_bytes: module.call_failed code OUTPUT_TOO_LARGE before the host reads anything.
(module
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
  (func (export "reduce") (param i32 i32) (result i64)
    (i64.const 0x1000000))
)
