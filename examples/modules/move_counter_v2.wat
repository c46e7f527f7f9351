;; move_counter 2.0.0: the upgrade example. Like move_counter 1.0.0 (Agent World module ABI v1,
;; docs/module-abi.md), with the same module id, kind, interface_version, exports and subscriptions,
;; but it emits counter.milestone on every 5th move of an agent instead of every 10th.
;;
;; Subscribed to domain.agent_moved (post_event). For each event it reads event.data.agent_id from
;; the msgpack ModuleCallInput, adds one to that agent's count in its state, and returns
;;   {"new_state": <bin>, "effects": [], "emits": []}
;; or, on every 5th move of an agent,
;;   {"new_state": <bin>, "effects": [],
;;    "emits": [{"kind": "counter.milestone", "data": {"agent_id": <str>, "moves": <uint32>}}]}
;;
;; State (opaque bytes to the host): a table of records
;;   [u8 id_len][id_len bytes of agent id][u32 little-endian move count]
;; in first-seen order.
;;
;; Memory: constant strings at 8..85, a bump allocator from 1024 (fresh instance per call, so
;; nothing is ever freed). Anything unexpected in the input gives an empty output {} (no change).
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  ;; string scratch registers set by $read_str / $read_bin
  (global $s_ptr (mut i32) (i32.const 0))
  (global $s_len (mut i32) (i32.const 0))

  ;; 8: empty map {} (the "no change" output)
  (data (i32.const 8) "\80")
  ;; 16 "event" | 21 "data" | 25 "agent_id" | 33 "state" | 38 "new_state" | 47 "effects"
  ;; 54 "emits" | 59 "kind" | 63 "counter.milestone" | 80 "moves"
  (data (i32.const 16) "eventdataagent_idstatenew_stateeffectsemitskindcounter.milestonemoves")

  ;; alloc(len) -> ptr: 8-byte aligned bump allocation, growing memory as needed; 0 on failure.
  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $p i32) (local $end i32) (local $pages i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (if (i32.lt_u (local.get $end) (local.get $p)) (then (return (i32.const 0))))
    (local.set $pages
      (i32.sub (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16)) (memory.size)))
    (if (i32.gt_s (local.get $pages) (i32.const 0))
      (then
        (if (i32.eq (memory.grow (local.get $pages)) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))

  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))

  (func $be16 (param $p i32) (result i32)
    (i32.or (i32.shl (i32.load8_u (local.get $p)) (i32.const 8))
            (i32.load8_u offset=1 (local.get $p))))

  (func $be32 (param $p i32) (result i32)
    (i32.or (i32.shl (call $be16 (local.get $p)) (i32.const 16))
            (call $be16 (i32.add (local.get $p) (i32.const 2)))))

  ;; $skip(p) -> the position just after the msgpack value at p (iterative: no recursion).
  (func $skip (param $p i32) (result i32)
    (local $n i32) (local $b i32)
    (local.set $n (i32.const 1))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (local.set $b (i32.load8_u (local.get $p)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        ;; fixint, negative fixint, nil, false, true: nothing follows
        (br_if $next (i32.le_u (local.get $b) (i32.const 0x7f)))
        (br_if $next (i32.ge_u (local.get $b) (i32.const 0xe0)))
        (br_if $next (i32.eq (local.get $b) (i32.const 0xc0)))
        (br_if $next (i32.eq (local.get $b) (i32.const 0xc2)))
        (br_if $next (i32.eq (local.get $b) (i32.const 0xc3)))
        ;; fixmap: 2n more values
        (if (i32.le_u (local.get $b) (i32.const 0x8f))
          (then (local.set $n (i32.add (local.get $n) (i32.shl (i32.and (local.get $b) (i32.const 0x0f)) (i32.const 1))))
                (br $next)))
        ;; fixarray: n more values
        (if (i32.le_u (local.get $b) (i32.const 0x9f))
          (then (local.set $n (i32.add (local.get $n) (i32.and (local.get $b) (i32.const 0x0f))))
                (br $next)))
        ;; fixstr
        (if (i32.le_u (local.get $b) (i32.const 0xbf))
          (then (local.set $p (i32.add (local.get $p) (i32.and (local.get $b) (i32.const 0x1f))))
                (br $next)))
        ;; bin8 / str8 / ext8
        (if (i32.or (i32.eq (local.get $b) (i32.const 0xc4)) (i32.eq (local.get $b) (i32.const 0xd9)))
          (then (local.set $p (i32.add (local.get $p) (i32.add (i32.const 1) (i32.load8_u (local.get $p)))))
                (br $next)))
        (if (i32.eq (local.get $b) (i32.const 0xc7))
          (then (local.set $p (i32.add (local.get $p) (i32.add (i32.const 2) (i32.load8_u (local.get $p)))))
                (br $next)))
        ;; bin16 / str16 / ext16
        (if (i32.or (i32.eq (local.get $b) (i32.const 0xc5)) (i32.eq (local.get $b) (i32.const 0xda)))
          (then (local.set $p (i32.add (local.get $p) (i32.add (i32.const 2) (call $be16 (local.get $p)))))
                (br $next)))
        (if (i32.eq (local.get $b) (i32.const 0xc8))
          (then (local.set $p (i32.add (local.get $p) (i32.add (i32.const 3) (call $be16 (local.get $p)))))
                (br $next)))
        ;; bin32 / str32 / ext32
        (if (i32.or (i32.eq (local.get $b) (i32.const 0xc6)) (i32.eq (local.get $b) (i32.const 0xdb)))
          (then (local.set $p (i32.add (local.get $p) (i32.add (i32.const 4) (call $be32 (local.get $p)))))
                (br $next)))
        (if (i32.eq (local.get $b) (i32.const 0xc9))
          (then (local.set $p (i32.add (local.get $p) (i32.add (i32.const 5) (call $be32 (local.get $p)))))
                (br $next)))
        ;; fixed-size numbers: u8/i8 1, u16/i16 2, u32/i32/f32 4, u64/i64/f64 8
        (if (i32.or (i32.eq (local.get $b) (i32.const 0xcc)) (i32.eq (local.get $b) (i32.const 0xd0)))
          (then (local.set $p (i32.add (local.get $p) (i32.const 1))) (br $next)))
        (if (i32.or (i32.eq (local.get $b) (i32.const 0xcd)) (i32.eq (local.get $b) (i32.const 0xd1)))
          (then (local.set $p (i32.add (local.get $p) (i32.const 2))) (br $next)))
        (if (i32.or (i32.or (i32.eq (local.get $b) (i32.const 0xca)) (i32.eq (local.get $b) (i32.const 0xce)))
                    (i32.eq (local.get $b) (i32.const 0xd2)))
          (then (local.set $p (i32.add (local.get $p) (i32.const 4))) (br $next)))
        (if (i32.or (i32.or (i32.eq (local.get $b) (i32.const 0xcb)) (i32.eq (local.get $b) (i32.const 0xcf)))
                    (i32.eq (local.get $b) (i32.const 0xd3)))
          (then (local.set $p (i32.add (local.get $p) (i32.const 8))) (br $next)))
        ;; fixext 1/2/4/8/16: type byte + 2^(b-0xd4) bytes
        (if (i32.le_u (local.get $b) (i32.const 0xd8))
          (then (if (i32.ge_u (local.get $b) (i32.const 0xd4))
                  (then (local.set $p (i32.add (local.get $p)
                          (i32.add (i32.const 1) (i32.shl (i32.const 1) (i32.sub (local.get $b) (i32.const 0xd4))))))
                        (br $next)))))
        ;; array16 / array32
        (if (i32.eq (local.get $b) (i32.const 0xdc))
          (then (local.set $n (i32.add (local.get $n) (call $be16 (local.get $p))))
                (local.set $p (i32.add (local.get $p) (i32.const 2))) (br $next)))
        (if (i32.eq (local.get $b) (i32.const 0xdd))
          (then (local.set $n (i32.add (local.get $n) (call $be32 (local.get $p))))
                (local.set $p (i32.add (local.get $p) (i32.const 4))) (br $next)))
        ;; map16 / map32
        (if (i32.eq (local.get $b) (i32.const 0xde))
          (then (local.set $n (i32.add (local.get $n) (i32.shl (call $be16 (local.get $p)) (i32.const 1))))
                (local.set $p (i32.add (local.get $p) (i32.const 2))) (br $next)))
        (if (i32.eq (local.get $b) (i32.const 0xdf))
          (then (local.set $n (i32.add (local.get $n) (i32.shl (call $be32 (local.get $p)) (i32.const 1))))
                (local.set $p (i32.add (local.get $p) (i32.const 4))) (br $next)))
        ;; 0xc1 is never used by msgpack
        unreachable))
    (local.get $p))

  ;; $read_str(p): if a str is at p, set $s_ptr/$s_len to its bytes and return 1, else 0.
  (func $read_str (param $p i32) (result i32)
    (local $b i32)
    (local.set $b (i32.load8_u (local.get $p)))
    (if (i32.eq (i32.and (local.get $b) (i32.const 0xe0)) (i32.const 0xa0))
      (then (global.set $s_len (i32.and (local.get $b) (i32.const 0x1f)))
            (global.set $s_ptr (i32.add (local.get $p) (i32.const 1)))
            (return (i32.const 1))))
    (if (i32.eq (local.get $b) (i32.const 0xd9))
      (then (global.set $s_len (i32.load8_u offset=1 (local.get $p)))
            (global.set $s_ptr (i32.add (local.get $p) (i32.const 2)))
            (return (i32.const 1))))
    (if (i32.eq (local.get $b) (i32.const 0xda))
      (then (global.set $s_len (call $be16 (i32.add (local.get $p) (i32.const 1))))
            (global.set $s_ptr (i32.add (local.get $p) (i32.const 3)))
            (return (i32.const 1))))
    (i32.const 0))

  ;; $read_bin(p): if a bin is at p, set $s_ptr/$s_len to its bytes and return 1, else 0.
  (func $read_bin (param $p i32) (result i32)
    (local $b i32)
    (local.set $b (i32.load8_u (local.get $p)))
    (if (i32.eq (local.get $b) (i32.const 0xc4))
      (then (global.set $s_len (i32.load8_u offset=1 (local.get $p)))
            (global.set $s_ptr (i32.add (local.get $p) (i32.const 2)))
            (return (i32.const 1))))
    (if (i32.eq (local.get $b) (i32.const 0xc5))
      (then (global.set $s_len (call $be16 (i32.add (local.get $p) (i32.const 1))))
            (global.set $s_ptr (i32.add (local.get $p) (i32.const 3)))
            (return (i32.const 1))))
    (if (i32.eq (local.get $b) (i32.const 0xc6))
      (then (global.set $s_len (call $be32 (i32.add (local.get $p) (i32.const 1))))
            (global.set $s_ptr (i32.add (local.get $p) (i32.const 5)))
            (return (i32.const 1))))
    (i32.const 0))

  ;; $eq(a, b, n): 1 if the n bytes at a and b are equal.
  (func $eq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $differ
      (loop $next
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $differ (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  ;; $map_get(p, key, klen): position of the value under str key (key, klen) in the map at p, or 0.
  (func $map_get (param $p i32) (param $key i32) (param $klen i32) (result i32)
    (local $n i32) (local $b i32)
    (local.set $b (i32.load8_u (local.get $p)))
    (block $found_header
      (if (i32.eq (i32.and (local.get $b) (i32.const 0xf0)) (i32.const 0x80))
        (then (local.set $n (i32.and (local.get $b) (i32.const 0x0f)))
              (local.set $p (i32.add (local.get $p) (i32.const 1)))
              (br $found_header)))
      (if (i32.eq (local.get $b) (i32.const 0xde))
        (then (local.set $n (call $be16 (i32.add (local.get $p) (i32.const 1))))
              (local.set $p (i32.add (local.get $p) (i32.const 3)))
              (br $found_header)))
      (if (i32.eq (local.get $b) (i32.const 0xdf))
        (then (local.set $n (call $be32 (i32.add (local.get $p) (i32.const 1))))
              (local.set $p (i32.add (local.get $p) (i32.const 5)))
              (br $found_header)))
      (return (i32.const 0)))
    (block $end
      (loop $next
        (br_if $end (i32.eqz (local.get $n)))
        (if (call $read_str (local.get $p))
          (then
            (if (i32.eq (global.get $s_len) (local.get $klen))
              (then
                (if (call $eq (global.get $s_ptr) (local.get $key) (local.get $klen))
                  (then (return (call $skip (local.get $p)))))))))
        (local.set $p (call $skip (call $skip (local.get $p))))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  (func $put8 (param $o i32) (param $v i32) (result i32)
    (i32.store8 (local.get $o) (local.get $v))
    (i32.add (local.get $o) (i32.const 1)))

  (func $put_bytes (param $o i32) (param $src i32) (param $n i32) (result i32)
    (memory.copy (local.get $o) (local.get $src) (local.get $n))
    (i32.add (local.get $o) (local.get $n)))

  (func $put32be (param $o i32) (param $v i32) (result i32)
    (i32.store8 (local.get $o) (i32.shr_u (local.get $v) (i32.const 24)))
    (i32.store8 offset=1 (local.get $o) (i32.shr_u (local.get $v) (i32.const 16)))
    (i32.store8 offset=2 (local.get $o) (i32.shr_u (local.get $v) (i32.const 8)))
    (i32.store8 offset=3 (local.get $o) (local.get $v))
    (i32.add (local.get $o) (i32.const 4)))

  (func (export "reduce") (param $in i32) (param $in_len i32) (result i64)
    (local $v i32) (local $aptr i32) (local $alen i32) (local $sptr i32) (local $slen i32)
    (local $ns i32) (local $nslen i32) (local $q i32) (local $end i32) (local $rec i32) (local $count i32)
    (local $out i32) (local $o i32)
    ;; agent id: input.event.data.agent_id (a str of 1..64 bytes), else no change
    (local.set $v (call $map_get (local.get $in) (i32.const 16) (i32.const 5)))
    (if (i32.eqz (local.get $v)) (then (return (call $pack (i32.const 8) (i32.const 1)))))
    (local.set $v (call $map_get (local.get $v) (i32.const 21) (i32.const 4)))
    (if (i32.eqz (local.get $v)) (then (return (call $pack (i32.const 8) (i32.const 1)))))
    (local.set $v (call $map_get (local.get $v) (i32.const 25) (i32.const 8)))
    (if (i32.eqz (local.get $v)) (then (return (call $pack (i32.const 8) (i32.const 1)))))
    (if (i32.eqz (call $read_str (local.get $v))) (then (return (call $pack (i32.const 8) (i32.const 1)))))
    (local.set $aptr (global.get $s_ptr))
    (local.set $alen (global.get $s_len))
    (if (i32.or (i32.eqz (local.get $alen)) (i32.gt_u (local.get $alen) (i32.const 64)))
      (then (return (call $pack (i32.const 8) (i32.const 1)))))
    ;; old state: input.state (bin) if present
    (local.set $v (call $map_get (local.get $in) (i32.const 33) (i32.const 5)))
    (if (local.get $v)
      (then (if (call $read_bin (local.get $v))
              (then (local.set $sptr (global.get $s_ptr))
                    (local.set $slen (global.get $s_len))))))
    ;; new state = old state, with this agent's count incremented (or a new record appended)
    (local.set $ns (call $alloc (i32.add (local.get $slen) (i32.add (local.get $alen) (i32.const 5)))))
    (if (i32.eqz (local.get $ns)) (then unreachable))
    (memory.copy (local.get $ns) (local.get $sptr) (local.get $slen))
    (local.set $q (local.get $ns))
    (local.set $end (i32.add (local.get $ns) (local.get $slen)))
    (block $searched
      (loop $next
        (br_if $searched (i32.ge_u (local.get $q) (local.get $end)))
        (if (i32.eq (i32.load8_u (local.get $q)) (local.get $alen))
          (then
            (if (call $eq (i32.add (local.get $q) (i32.const 1)) (local.get $aptr) (local.get $alen))
              (then (local.set $rec (i32.add (local.get $q) (i32.add (i32.const 1) (local.get $alen))))
                    (br $searched)))))
        (local.set $q (i32.add (local.get $q) (i32.add (i32.const 5) (i32.load8_u (local.get $q)))))
        (br $next)))
    (if (local.get $rec)
      (then
        (local.set $count (i32.add (i32.load align=1 (local.get $rec)) (i32.const 1)))
        (i32.store align=1 (local.get $rec) (local.get $count))
        (local.set $nslen (local.get $slen)))
      (else
        (i32.store8 (local.get $end) (local.get $alen))
        (memory.copy (i32.add (local.get $end) (i32.const 1)) (local.get $aptr) (local.get $alen))
        (local.set $count (i32.const 1))
        (i32.store align=1 (i32.add (local.get $end) (i32.add (i32.const 1) (local.get $alen))) (local.get $count))
        (local.set $nslen (i32.add (local.get $slen) (i32.add (local.get $alen) (i32.const 5))))))
    ;; output map
    (local.set $out (call $alloc (i32.add (local.get $nslen) (i32.add (local.get $alen) (i32.const 96)))))
    (if (i32.eqz (local.get $out)) (then unreachable))
    (local.set $o (call $put8 (local.get $out) (i32.const 0x83)))
    (local.set $o (call $put8 (local.get $o) (i32.const 0xa9)))
    (local.set $o (call $put_bytes (local.get $o) (i32.const 38) (i32.const 9)))
    (local.set $o (call $put8 (local.get $o) (i32.const 0xc6)))
    (local.set $o (call $put32be (local.get $o) (local.get $nslen)))
    (local.set $o (call $put_bytes (local.get $o) (local.get $ns) (local.get $nslen)))
    (local.set $o (call $put8 (local.get $o) (i32.const 0xa7)))
    (local.set $o (call $put_bytes (local.get $o) (i32.const 47) (i32.const 7)))
    (local.set $o (call $put8 (local.get $o) (i32.const 0x90)))
    (local.set $o (call $put8 (local.get $o) (i32.const 0xa5)))
    (local.set $o (call $put_bytes (local.get $o) (i32.const 54) (i32.const 5)))
    (if (i32.rem_u (local.get $count) (i32.const 5))
      (then (local.set $o (call $put8 (local.get $o) (i32.const 0x90))))
      (else
        (local.set $o (call $put8 (local.get $o) (i32.const 0x91)))
        (local.set $o (call $put8 (local.get $o) (i32.const 0x82)))
        (local.set $o (call $put8 (local.get $o) (i32.const 0xa4)))
        (local.set $o (call $put_bytes (local.get $o) (i32.const 59) (i32.const 4)))
        (local.set $o (call $put8 (local.get $o) (i32.const 0xb1)))
        (local.set $o (call $put_bytes (local.get $o) (i32.const 63) (i32.const 17)))
        (local.set $o (call $put8 (local.get $o) (i32.const 0xa4)))
        (local.set $o (call $put_bytes (local.get $o) (i32.const 21) (i32.const 4)))
        (local.set $o (call $put8 (local.get $o) (i32.const 0x82)))
        (local.set $o (call $put8 (local.get $o) (i32.const 0xa8)))
        (local.set $o (call $put_bytes (local.get $o) (i32.const 25) (i32.const 8)))
        (local.set $o (call $put8 (local.get $o) (i32.const 0xd9)))
        (local.set $o (call $put8 (local.get $o) (local.get $alen)))
        (local.set $o (call $put_bytes (local.get $o) (local.get $aptr) (local.get $alen)))
        (local.set $o (call $put8 (local.get $o) (i32.const 0xa5)))
        (local.set $o (call $put_bytes (local.get $o) (i32.const 80) (i32.const 5)))
        (local.set $o (call $put8 (local.get $o) (i32.const 0xce)))
        (local.set $o (call $put32be (local.get $o) (local.get $count)))))
    (call $pack (local.get $out) (i32.sub (local.get $o) (local.get $out))))
)
