;; hostile_nan: a reducer whose result depends on NaN bits. It builds a signalling NaN with a
;; payload taken from the input length (so nothing is constant-folded), adds 1.0 and stores the
;; raw f32 bits as its new_state: {"new_state": <4 bytes little-endian>}. Hardware would propagate
;; the payload (and x86 and ARM differ); with the engine's NaN canonicalization every node stores
;; the canonical quiet NaN 0x7fc00000.
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
  (data (i32.const 8) "\81\a9new_state\c4\04")
  (func (export "reduce") (param $in i32) (param $len i32) (result i64)
    (local $bits i32)
    (local.set $bits
      (i32.reinterpret_f32
        (f32.add
          (f32.reinterpret_i32 (i32.or (i32.const 0x7fa00000) (i32.and (local.get $len) (i32.const 0xff))))
          (f32.const 1.0))))
    (i32.store align=1 (i32.const 21) (local.get $bits))
    (i64.or (i64.shl (i64.const 8) (i64.const 32)) (i64.const 17)))
)
