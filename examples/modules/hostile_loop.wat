;; hostile_loop: a reducer that never returns. Every call runs out of fuel (module.call_failed,
;; code OUT_OF_GAS); the world bills max_gas and carries on.
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $len)))
    (local.get $p))
  (func (export "reduce") (param i32 i32) (result i64)
    (loop $forever (br $forever))
    (i64.const 0))
)
