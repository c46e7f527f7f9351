;; hostile_trap: a reducer that writes a valid {"new_state": "BAD!"} output into memory and then
;; divides by zero before returning it: module.call_failed code TRAP ("INTEGER_DIVISION_BY_ZERO"),
;; billed max_gas, and the half-built output is discarded (the instance state stays unchanged).
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
  (data (i32.const 8) "\81\a9new_state\c4\04BAD!")
  (func (export "reduce") (param $in i32) (param $len i32) (result i64)
    (drop (i32.div_u (local.get $len) (i32.sub (local.get $len) (local.get $len))))
    (i64.or (i64.shl (i64.const 8) (i64.const 32)) (i64.const 17)))
)
