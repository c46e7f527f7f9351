//! Agent World guest SDK for Rust (module ABI v1, see docs/module-abi.md and docs/module-guide.md).
//!
//! Copy this one file next to your module's `lib.rs` and write:
//!
//! ```ignore
//! #![no_std]
//! mod aw_sdk;
//! use aw_sdk::{Input, Output, Value};
//!
//! aw_sdk::export_reducer!(on_call);      // or export_pure!(f) for `kind: "pure"` modules
//!
//! fn on_call(input: &Input, out: &mut Output) {
//!     if let Some(action) = &input.action {
//!         out.emit("hello.seen", &[("agent_id", Value::Str(action.agent_id))]);
//!     }
//! }
//! ```
//!
//! The module must be declared as `mod aw_sdk;` at the crate root (the export macros call
//! `crate::aw_sdk::run`). No Cargo, no dependencies, no `alloc` crate: it builds with
//! `rustc --edition 2021 --target wasm32-unknown-unknown --crate-type cdylib -O lib.rs`
//! (rustc 1.63 or newer).
//!
//! What the SDK does for you: exports `alloc` (a bump allocator: every call runs in a fresh
//! instance, so nothing is ever freed), decodes the msgpack `ModuleCallInput` into [`Input`]
//! without copying, encodes your [`Output`] as the msgpack `ModuleOutput`, packs the result
//! pointer and length into the i64 the host expects, and turns a panic into a trap (the call fails
//! with `TRAP` and its whole output is discarded).

#![allow(dead_code)]

use core::arch::wasm32;

// ---- memory --------------------------------------------------------------------------------

const PAGE: usize = 65536;
static mut HEAP_TOP: usize = 0;
static mut HEAP_END: usize = 0;

/// Allocate `len` bytes, 8-byte aligned, from the bump heap (which starts at the end of the
/// module's initial memory and grows it page by page). Returns null if memory cannot grow (the
/// manifest's `max_mem_bytes` is reached). Never freed: the instance lives for one call.
pub fn alloc_bytes(len: usize) -> *mut u8 {
    unsafe {
        if HEAP_TOP == 0 {
            HEAP_TOP = wasm32::memory_size(0) * PAGE;
            HEAP_END = HEAP_TOP;
        }
        let start = (HEAP_TOP + 7) & !7;
        let end = match start.checked_add(len) {
            Some(end) => end,
            None => return core::ptr::null_mut(),
        };
        if end > HEAP_END {
            let pages = (end - HEAP_END + PAGE - 1) / PAGE;
            if wasm32::memory_grow(0, pages) == usize::MAX {
                return core::ptr::null_mut();
            }
            HEAP_END += pages * PAGE;
        }
        HEAP_TOP = end;
        start as *mut u8
    }
}

/// The ABI's `alloc(len) -> ptr` export: the host calls it once per call for the input bytes.
#[no_mangle]
pub extern "C" fn alloc(len: usize) -> *mut u8 {
    alloc_bytes(len)
}

/// A panic traps (`unreachable`): the call fails with code `TRAP` and nothing it produced is kept.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    wasm32::unreachable()
}

/// A growable byte buffer on the bump heap (a tiny `Vec<u8>`), with msgpack writers. Use it to
/// build your state bytes. Traps if memory runs out.
pub struct Buf {
    ptr: *mut u8,
    len: usize,
    cap: usize,
}

impl Buf {
    /// An empty buffer (allocates on first write).
    pub const fn new() -> Buf {
        Buf { ptr: core::ptr::null_mut(), len: 0, cap: 0 }
    }

    /// An empty buffer with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Buf {
        let mut b = Buf::new();
        b.reserve(cap);
        b
    }

    /// Number of bytes written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes written so far, writable (to patch a value in place).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn reserve(&mut self, extra: usize) {
        let need = match self.len.checked_add(extra) {
            Some(n) => n,
            None => wasm32::unreachable(),
        };
        if need <= self.cap {
            return;
        }
        let cap = if need < 64 { 64 } else if need < self.cap * 2 { self.cap * 2 } else { need };
        let p = alloc_bytes(cap);
        if p.is_null() {
            wasm32::unreachable();
        }
        if self.len > 0 {
            unsafe { core::ptr::copy_nonoverlapping(self.ptr, p, self.len) };
        }
        self.ptr = p;
        self.cap = cap;
    }

    /// Append one byte.
    pub fn push(&mut self, byte: u8) {
        self.reserve(1);
        unsafe { *self.ptr.add(self.len) = byte };
        self.len += 1;
    }

    /// Append bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        if !bytes.is_empty() {
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(self.len), bytes.len()) };
        }
        self.len += bytes.len();
    }

    /// Write a msgpack nil.
    pub fn write_nil(&mut self) {
        self.push(0xc0);
    }

    /// Write a msgpack bool.
    pub fn write_bool(&mut self, v: bool) {
        self.push(if v { 0xc3 } else { 0xc2 });
    }

    /// Write a msgpack integer in its shortest form.
    pub fn write_int(&mut self, v: i64) {
        if v >= 0 {
            let u = v as u64;
            if u < 128 {
                self.push(u as u8);
            } else if u <= 0xff {
                self.push(0xcc);
                self.push(u as u8);
            } else if u <= 0xffff {
                self.push(0xcd);
                self.extend(&(u as u16).to_be_bytes());
            } else if u <= 0xffff_ffff {
                self.push(0xce);
                self.extend(&(u as u32).to_be_bytes());
            } else {
                self.push(0xcf);
                self.extend(&u.to_be_bytes());
            }
        } else if v >= -32 {
            self.push(v as i8 as u8);
        } else if v >= i8::MIN as i64 {
            self.push(0xd0);
            self.push(v as i8 as u8);
        } else if v >= i16::MIN as i64 {
            self.push(0xd1);
            self.extend(&(v as i16).to_be_bytes());
        } else if v >= i32::MIN as i64 {
            self.push(0xd2);
            self.extend(&(v as i32).to_be_bytes());
        } else {
            self.push(0xd3);
            self.extend(&v.to_be_bytes());
        }
    }

    /// Write a msgpack str.
    pub fn write_str(&mut self, s: &str) {
        let n = s.len();
        if n < 32 {
            self.push(0xa0 | n as u8);
        } else if n <= 0xff {
            self.push(0xd9);
            self.push(n as u8);
        } else if n <= 0xffff {
            self.push(0xda);
            self.extend(&(n as u16).to_be_bytes());
        } else {
            self.push(0xdb);
            self.extend(&(n as u32).to_be_bytes());
        }
        self.extend(s.as_bytes());
    }

    /// Write a msgpack bin.
    pub fn write_bin(&mut self, b: &[u8]) {
        let n = b.len();
        if n <= 0xff {
            self.push(0xc4);
            self.push(n as u8);
        } else if n <= 0xffff {
            self.push(0xc5);
            self.extend(&(n as u16).to_be_bytes());
        } else {
            self.push(0xc6);
            self.extend(&(n as u32).to_be_bytes());
        }
        self.extend(b);
    }

    /// Write a msgpack array header for `n` items (then write the items).
    pub fn write_array_len(&mut self, n: usize) {
        if n < 16 {
            self.push(0x90 | n as u8);
        } else if n <= 0xffff {
            self.push(0xdc);
            self.extend(&(n as u16).to_be_bytes());
        } else {
            self.push(0xdd);
            self.extend(&(n as u32).to_be_bytes());
        }
    }

    /// Write a msgpack map header for `n` entries (then write key, value, key, value, ...).
    pub fn write_map_len(&mut self, n: usize) {
        if n < 16 {
            self.push(0x80 | n as u8);
        } else if n <= 0xffff {
            self.push(0xde);
            self.extend(&(n as u16).to_be_bytes());
        } else {
            self.push(0xdf);
            self.extend(&(n as u32).to_be_bytes());
        }
    }

    /// Write a [`Value`].
    pub fn write_value(&mut self, v: &Value) {
        match *v {
            Value::Int(i) => self.write_int(i),
            Value::Str(s) => self.write_str(s),
            Value::Bool(b) => self.write_bool(b),
            Value::Bytes(b) => self.write_bin(b),
        }
    }

    /// Write a map of string keys to [`Value`]s.
    pub fn write_fields(&mut self, fields: &[(&str, Value)]) {
        self.write_map_len(fields.len());
        for (k, v) in fields {
            self.write_str(k);
            self.write_value(v);
        }
    }
}

// ---- reading msgpack -----------------------------------------------------------------------

fn be(buf: &[u8], pos: usize, n: usize) -> Option<usize> {
    let bytes = buf.get(pos..pos.checked_add(n)?)?;
    let mut v = 0usize;
    for b in bytes {
        v = (v << 8) | *b as usize;
    }
    Some(v)
}

/// Position just after the msgpack value at `pos` (iterative, bounds-checked); None if malformed.
fn skip(buf: &[u8], mut pos: usize) -> Option<usize> {
    let mut left: usize = 1;
    while left > 0 {
        left -= 1;
        let b = *buf.get(pos)?;
        pos += 1;
        let (extra, items) = match b {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * (b & 0x0f) as usize),
            0x90..=0x9f => (0, (b & 0x0f) as usize),
            0xa0..=0xbf => ((b & 0x1f) as usize, 0),
            0xc4 | 0xd9 => (1 + be(buf, pos, 1)?, 0),
            0xc5 | 0xda => (2 + be(buf, pos, 2)?, 0),
            0xc6 | 0xdb => (4 + be(buf, pos, 4)?, 0),
            0xc7 => (2 + be(buf, pos, 1)?, 0),
            0xc8 => (3 + be(buf, pos, 2)?, 0),
            0xc9 => (5 + be(buf, pos, 4)?, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xd4..=0xd8 => (1 + (1usize << (b - 0xd4)), 0),
            0xdc => (2, be(buf, pos, 2)?),
            0xdd => (4, be(buf, pos, 4)?),
            0xde => (2, 2 * be(buf, pos, 2)?),
            0xdf => (4, 2 * be(buf, pos, 4)?),
            _ => return None,
        };
        pos = pos.checked_add(extra)?;
        left = left.checked_add(items)?;
    }
    if pos > buf.len() {
        return None;
    }
    Some(pos)
}

/// A borrowed msgpack value inside the input (zero-copy). Accessors return None when the value
/// has another type; `get` looks a key up in a map.
#[derive(Clone, Copy)]
pub struct Val<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Val<'a> {
    /// The value at the start of `buf` (e.g. bytes you encoded into your state with [`Buf`]).
    pub fn new(buf: &'a [u8]) -> Val<'a> {
        Val { buf, pos: 0 }
    }

    fn tag(&self) -> u8 {
        *self.buf.get(self.pos).unwrap_or(&0xc1)
    }

    /// The msgpack bytes of this value.
    pub fn raw(&self) -> &'a [u8] {
        match skip(self.buf, self.pos) {
            Some(end) => &self.buf[self.pos..end],
            None => &[],
        }
    }

    /// True for nil.
    pub fn is_nil(&self) -> bool {
        self.tag() == 0xc0
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self.tag() {
            0xc2 => Some(false),
            0xc3 => Some(true),
            _ => None,
        }
    }

    /// The integer, if this is one that fits an i64.
    pub fn as_int(&self) -> Option<i64> {
        let b = self.tag();
        let p = self.pos + 1;
        let s = self.buf;
        match b {
            0x00..=0x7f => Some(b as i64),
            0xe0..=0xff => Some(b as i8 as i64),
            0xcc => Some(be(s, p, 1)? as i64),
            0xcd => Some(be(s, p, 2)? as i64),
            0xce => Some(be(s, p, 4)? as i64),
            0xcf => {
                let v = u64::from_be_bytes(s.get(p..p + 8)?.try_into().ok()?);
                if v > i64::MAX as u64 { None } else { Some(v as i64) }
            }
            0xd0 => Some(*s.get(p)? as i8 as i64),
            0xd1 => Some(i16::from_be_bytes(s.get(p..p + 2)?.try_into().ok()?) as i64),
            0xd2 => Some(i32::from_be_bytes(s.get(p..p + 4)?.try_into().ok()?) as i64),
            0xd3 => Some(i64::from_be_bytes(s.get(p..p + 8)?.try_into().ok()?)),
            _ => None,
        }
    }

    fn payload(&self, str_type: bool) -> Option<&'a [u8]> {
        let b = self.tag();
        let p = self.pos + 1;
        let (start, len) = match (b, str_type) {
            (0xa0..=0xbf, true) => (p, (b & 0x1f) as usize),
            (0xd9, true) | (0xc4, false) => (p + 1, be(self.buf, p, 1)?),
            (0xda, true) | (0xc5, false) => (p + 2, be(self.buf, p, 2)?),
            (0xdb, true) | (0xc6, false) => (p + 4, be(self.buf, p, 4)?),
            _ => return None,
        };
        self.buf.get(start..start.checked_add(len)?)
    }

    /// The string, if this is a (UTF-8) str.
    pub fn as_str(&self) -> Option<&'a str> {
        core::str::from_utf8(self.payload(true)?).ok()
    }

    /// The bytes, if this is a bin.
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        self.payload(false)
    }

    fn header(&self) -> Option<(bool, usize, usize)> {
        // (is_map, entries, position of the first item)
        let b = self.tag();
        let p = self.pos + 1;
        match b {
            0x80..=0x8f => Some((true, (b & 0x0f) as usize, p)),
            0x90..=0x9f => Some((false, (b & 0x0f) as usize, p)),
            0xde => Some((true, be(self.buf, p, 2)?, p + 2)),
            0xdf => Some((true, be(self.buf, p, 4)?, p + 4)),
            0xdc => Some((false, be(self.buf, p, 2)?, p + 2)),
            0xdd => Some((false, be(self.buf, p, 4)?, p + 4)),
            _ => None,
        }
    }

    /// Number of items of an array or entries of a map.
    pub fn len(&self) -> Option<usize> {
        self.header().map(|h| h.1)
    }

    /// Item `i` of an array.
    pub fn at(&self, i: usize) -> Option<Val<'a>> {
        let (is_map, n, mut p) = self.header()?;
        if is_map || i >= n {
            return None;
        }
        for _ in 0..i {
            p = skip(self.buf, p)?;
        }
        Some(Val { buf: self.buf, pos: p })
    }

    /// The value under the string key `key` of a map.
    pub fn get(&self, key: &str) -> Option<Val<'a>> {
        let (is_map, n, mut p) = self.header()?;
        if !is_map {
            return None;
        }
        for _ in 0..n {
            let k = Val { buf: self.buf, pos: p };
            let vpos = skip(self.buf, p)?;
            if k.payload(true) == Some(key.as_bytes()) {
                return Some(Val { buf: self.buf, pos: vpos });
            }
            p = skip(self.buf, vpos)?;
        }
        None
    }

    /// An iterator over the (string key, value) entries of a map (non-string keys are skipped).
    pub fn entries(&self) -> Option<Entries<'a>> {
        let (is_map, n, p) = self.header()?;
        if !is_map {
            return None;
        }
        Some(Entries { buf: self.buf, pos: p, left: n })
    }
}

/// Iterator over a map's entries, from [`Val::entries`].
pub struct Entries<'a> {
    buf: &'a [u8],
    pos: usize,
    left: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, Val<'a>);

    fn next(&mut self) -> Option<(&'a str, Val<'a>)> {
        while self.left > 0 {
            self.left -= 1;
            let key = Val { buf: self.buf, pos: self.pos };
            let vpos = skip(self.buf, self.pos)?;
            self.pos = skip(self.buf, vpos)?;
            if let Some(k) = key.as_str() {
                return Some((k, Val { buf: self.buf, pos: vpos }));
            }
        }
        None
    }
}

// ---- input ---------------------------------------------------------------------------------

/// When the call happens (`ctx.stage`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stage {
    /// An admitted action, before its handler runs (`input.action` is set).
    PreAction,
    /// The action again, after its events (`input.action` is set, with `outcome`).
    PostAction,
    /// An event the action produced (`input.event` is set).
    PostEvent,
    /// Once per block, with neither event nor action.
    Tick,
    /// A stage this SDK does not know.
    Other,
}

/// The call's context (`ctx`): who and where the call is.
pub struct Ctx<'a> {
    /// The chain's id.
    pub chain_id: &'a str,
    /// The block height.
    pub height: i64,
    /// The block's timestamp in milliseconds.
    pub timestamp_ms: i64,
    /// The stage of this call.
    pub stage: Stage,
    /// Identifies the call; also in the call's events.
    pub trace_id: &'a str,
    /// This instance's id.
    pub instance_id: &'a str,
    /// This module's id (from the manifest).
    pub module_id: &'a str,
    /// This module's version.
    pub version: &'a str,
    /// The agent that owns this instance.
    pub owner_agent_id: &'a str,
}

/// A journal event (`post_event` calls).
pub struct Event<'a> {
    /// The event's sequence number.
    pub seq: i64,
    /// The height of its block.
    pub height: i64,
    /// Its kind, e.g. `domain.agent_moved`.
    pub kind: &'a str,
    /// Its data map: `event.data.get("agent_id").and_then(|v| v.as_str())`.
    pub data: Val<'a>,
}

/// An action (`pre_action` and `post_action` calls).
pub struct Action<'a> {
    /// The action kind (`type` in the ABI), e.g. `move_agent`.
    pub kind: &'a str,
    /// The acting agent.
    pub agent_id: &'a str,
    /// Its nonce.
    pub nonce: i64,
    /// `Some("applied")` or `Some("rejected")` in post_action calls, None in pre_action calls.
    pub outcome: Option<&'a str>,
    /// The whole action map (`type`, `agent_id`, `nonce`, the action's fields, `outcome`).
    pub fields: Val<'a>,
}

impl<'a> Action<'a> {
    /// One of the action's fields, e.g. `action.get("to")` of a move_agent (an array [x, y, z]).
    pub fn get(&self, field: &str) -> Option<Val<'a>> {
        self.fields.get(field)
    }

    /// True in a post_action call whose action was applied (not rejected).
    pub fn applied(&self) -> bool {
        self.outcome == Some("applied")
    }
}

/// The decoded `ModuleCallInput`. Everything borrows the input bytes.
pub struct Input<'a> {
    /// The call context.
    pub ctx: Ctx<'a>,
    /// The event (post_event calls).
    pub event: Option<Event<'a>>,
    /// The instance's state: the bytes of its last accepted `new_state` (reducers; None before
    /// the first one).
    pub state: Option<&'a [u8]>,
    /// The action (pre_action and post_action calls).
    pub action: Option<Action<'a>>,
    /// The whole input map, for anything not covered above.
    pub raw: Val<'a>,
}

fn str_at<'a>(map: &Val<'a>, key: &str) -> &'a str {
    map.get(key).and_then(|v| v.as_str()).unwrap_or("")
}

fn int_at(map: &Val, key: &str) -> i64 {
    map.get(key).and_then(|v| v.as_int()).unwrap_or(0)
}

impl<'a> Input<'a> {
    /// Decode the input bytes. Missing context fields read as "" or 0.
    pub fn parse(bytes: &'a [u8]) -> Input<'a> {
        let raw = Val::new(bytes);
        let ctx = raw.get("ctx").unwrap_or(Val::new(&[0x80]));
        let stage = match str_at(&ctx, "stage") {
            "pre_action" => Stage::PreAction,
            "post_action" => Stage::PostAction,
            "post_event" => Stage::PostEvent,
            "tick" => Stage::Tick,
            _ => Stage::Other,
        };
        let event = raw.get("event").filter(|e| e.len().is_some()).map(|e| Event {
            seq: int_at(&e, "seq"),
            height: int_at(&e, "height"),
            kind: str_at(&e, "kind"),
            data: e.get("data").unwrap_or(Val::new(&[0x80])),
        });
        let action = raw.get("action").filter(|a| a.len().is_some()).map(|a| Action {
            kind: str_at(&a, "type"),
            agent_id: str_at(&a, "agent_id"),
            nonce: int_at(&a, "nonce"),
            outcome: a.get("outcome").and_then(|v| v.as_str()),
            fields: a,
        });
        Input {
            ctx: Ctx {
                chain_id: str_at(&ctx, "chain_id"),
                height: int_at(&ctx, "height"),
                timestamp_ms: int_at(&ctx, "timestamp_ms"),
                stage,
                trace_id: str_at(&ctx, "trace_id"),
                instance_id: str_at(&ctx, "instance_id"),
                module_id: str_at(&ctx, "module_id"),
                version: str_at(&ctx, "version"),
                owner_agent_id: str_at(&ctx, "owner_agent_id"),
            },
            event,
            state: raw.get("state").and_then(|v| v.as_bytes()),
            action,
            raw,
        }
    }
}

// ---- output --------------------------------------------------------------------------------

/// A value in emit data or effect params (the ABI allows no floats and no nil).
#[derive(Clone, Copy)]
pub enum Value<'a> {
    /// An integer.
    Int(i64),
    /// A string.
    Str(&'a str),
    /// A boolean.
    Bool(bool),
    /// Bytes (bin).
    Bytes(&'a [u8]),
}

/// What the call returns (`ModuleOutput`): optional new state, effects and emits. Start empty;
/// an empty output changes nothing.
pub struct Output {
    state: Option<Buf>,
    effects: Buf,
    n_effects: usize,
    emits: Buf,
    n_emits: usize,
}

impl Output {
    /// An empty output.
    pub fn new() -> Output {
        Output { state: None, effects: Buf::new(), n_effects: 0, emits: Buf::new(), n_emits: 0 }
    }

    /// Replace the instance's state with `bytes` (reducers only; a pure module that sets state
    /// fails with INVALID_OUTPUT). Not calling it keeps the state unchanged.
    pub fn set_state(&mut self, bytes: &[u8]) {
        let mut b = Buf::with_capacity(bytes.len());
        b.extend(bytes);
        self.state = Some(b);
    }

    /// Emit an event: recorded as `module.emitted {kind, data, ...}`. `kind` must match
    /// `^[a-z0-9][a-z0-9_.:-]{0,127}$`; at most the manifest's `max_emits` per call.
    pub fn emit(&mut self, kind: &str, data: &[(&str, Value)]) {
        self.emits.write_map_len(2);
        self.emits.write_str("kind");
        self.emits.write_str(kind);
        self.emits.write_str("data");
        self.emits.write_fields(data);
        self.n_emits += 1;
    }

    /// Ask for an effect under capability `cap_ref` (checked against the manifest's
    /// `required_caps`, the installer's grants and the world policy).
    pub fn effect(&mut self, kind: &str, params: &[(&str, Value)], cap_ref: &str) {
        self.effects.write_map_len(3);
        self.effects.write_str("kind");
        self.effects.write_str(kind);
        self.effects.write_str("params");
        self.effects.write_fields(params);
        self.effects.write_str("cap_ref");
        self.effects.write_str(cap_ref);
        self.n_effects += 1;
    }

    /// Move `amount` of `resource` (`"electricity"` or `"data"`) from the instance owner's agent
    /// to agent `to`: the `transfer_resource` effect under capability `agent.transfer`.
    pub fn transfer(&mut self, to: &str, resource: &str, amount: i64) {
        self.effect(
            "transfer_resource",
            &[("to", Value::Str(to)), ("kind", Value::Str(resource)), ("amount", Value::Int(amount))],
            "agent.transfer",
        );
    }

    /// Encode the output and return the packed `(ptr << 32) | len` the entry point returns.
    pub fn finish(self) -> u64 {
        let mut out = Buf::new();
        let keys = self.state.is_some() as usize + (self.n_effects > 0) as usize + (self.n_emits > 0) as usize;
        out.write_map_len(keys);
        if let Some(state) = &self.state {
            out.write_str("new_state");
            out.write_bin(state.as_slice());
        }
        if self.n_effects > 0 {
            out.write_str("effects");
            out.write_array_len(self.n_effects);
            out.extend(self.effects.as_slice());
        }
        if self.n_emits > 0 {
            out.write_str("emits");
            out.write_array_len(self.n_emits);
            out.extend(self.emits.as_slice());
        }
        ((out.ptr as u32 as u64) << 32) | out.len as u32 as u64
    }
}

/// Run `f` on the input at `ptr..ptr+len` and return the packed output (used by the macros).
pub fn run(ptr: *const u8, len: usize, f: fn(&Input, &mut Output)) -> u64 {
    let bytes: &[u8] = if len == 0 { &[] } else { unsafe { core::slice::from_raw_parts(ptr, len) } };
    let input = Input::parse(bytes);
    let mut out = Output::new();
    f(&input, &mut out);
    out.finish()
}

/// Export `f: fn(&Input, &mut Output)` as the `reduce` entry point (`kind: "reducer"` modules).
#[allow(unused_macros)]
macro_rules! export_reducer {
    ($f:path) => {
        const _: () = {
            #[no_mangle]
            pub extern "C" fn reduce(ptr: *const u8, len: usize) -> u64 {
                crate::aw_sdk::run(ptr, len, $f)
            }
        };
    };
}

/// Export `f: fn(&Input, &mut Output)` as the `call` entry point (`kind: "pure"` modules; they
/// must not call `Output::set_state`).
#[allow(unused_macros)]
macro_rules! export_pure {
    ($f:path) => {
        const _: () = {
            #[no_mangle]
            pub extern "C" fn call(ptr: *const u8, len: usize) -> u64 {
                crate::aw_sdk::run(ptr, len, $f)
            }
        };
    };
}

#[allow(unused_imports)]
pub(crate) use export_pure;
#[allow(unused_imports)]
pub(crate) use export_reducer;
