;; hostile_memory: a reducer that grows its memory one page at a time until the sandbox refuses
;; (memory.grow returns -1 at the max_mem_bytes limit), then traps. Every call fails with
;; module.call_failed code MEMORY_LIMIT; the world carries on.
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $len)))
    (local.get $p))
  (func (export "reduce") (param i32 i32) (result i64)
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable)
)
