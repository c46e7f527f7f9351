;; The trivial reducer used by benchmarks/modules.py: accepts any input and returns the msgpack
;; ModuleOutput {} (one byte, 0x80: no new state, no effects, no emits). Exports follow
;; docs/module-abi.md: memory, alloc(len) -> ptr (bump allocator from 1024), reduce(ptr, len) -> i64
;; packing (out_ptr << 32) | out_len.
(module
  (memory (export "memory") 1)
  (data (i32.const 0) "\80")
  (global $heap (mut i32) (i32.const 1024))
  (func (export "alloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "reduce") (param $p i32) (param $n i32) (result i64)
    (i64.const 1)))
