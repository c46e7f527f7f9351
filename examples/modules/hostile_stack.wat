;; hostile_stack: a reducer that recurses without end. The engine's fixed wasm stack
;; (sandbox.MAX_WASM_STACK_BYTES) overflows: module.call_failed code TRAP, detail
;; "reduce trapped: STACK_OVERFLOW", billed max_gas; the world carries on.
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
  (func $down (param $n i64) (result i64)
    (i64.add (call $down (i64.add (local.get $n) (i64.const 1))) (i64.const 1)))
  (func (export "reduce") (param i32 i32) (result i64)
    (call $down (i64.const 0)))
)
