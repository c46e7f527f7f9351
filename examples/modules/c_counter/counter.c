/* c_counter: counts each agent's applied move_agent actions and emits
 * counter.moved {agent_id, moves} after every move (Agent World module ABI v1,
 * docs/module-abi.md). The same behaviour as examples/modules/rust_counter/, in plain C with no
 * libc: a bump allocator, a small msgpack reader and writer.
 *
 * Subscribed to move_agent at stage post_action (manifest.json). State: records
 * [u8 id_len][id bytes][u32 little-endian count], in first-seen order.
 *
 * Build: python -m ziglang cc --target=wasm32-freestanding -O2 -nostdlib -Wl,--no-entry \
 *            -Wl,--strip-all -o counter.wasm counter.c      (or: awnode module build)
 */
typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

#define EXPORT(name) __attribute__((export_name(name)))
#define PAGE 65536u

/* The compiler may turn loops into calls to these; there is no libc to provide them. */
void *memcpy(void *dst, const void *src, unsigned long n) {
    u8 *d = dst; const u8 *s = src;
    while (n--) *d++ = *s++;
    return dst;
}
void *memset(void *dst, int c, unsigned long n) {
    u8 *d = dst;
    while (n--) *d++ = (u8)c;
    return dst;
}

/* ---- bump allocator: each call runs in a fresh instance, so nothing is freed ---- */
static u32 heap_top, heap_end;

EXPORT("alloc") u8 *alloc(u32 len) {
    if (heap_top == 0) heap_top = heap_end = (u32)__builtin_wasm_memory_size(0) * PAGE;
    u32 start = (heap_top + 7u) & ~7u, end = start + len;
    if (end < start) return 0;
    if (end > heap_end) {
        u32 pages = (end - heap_end + PAGE - 1) / PAGE;
        if (__builtin_wasm_memory_grow(0, pages) == (unsigned long)-1) return 0;
        heap_end += pages * PAGE;
    }
    heap_top = end;
    return (u8 *)start;
}

/* ---- msgpack reading (the host's input is well formed; the end pointer bounds every read) ---- */
static const u8 *in_end;

static u32 be(const u8 *p, int n) { u32 v = 0; while (n--) v = (v << 8) | *p++; return v; }

/* Position after the value at p, or 0 if it runs past the input. */
static const u8 *skip(const u8 *p) {
    u32 left = 1;
    while (left--) {
        if (!p || p >= in_end) return 0;
        u8 b = *p++;
        u32 extra = 0, items = 0;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {}
        else if (b <= 0x8f) items = 2u * (b & 0x0f);
        else if (b <= 0x9f) items = b & 0x0f;
        else if (b <= 0xbf) extra = b & 0x1f;
        else if (b == 0xc4 || b == 0xd9) extra = 1 + be(p, 1);
        else if (b == 0xc5 || b == 0xda) extra = 2 + be(p, 2);
        else if (b == 0xc6 || b == 0xdb) extra = 4 + be(p, 4);
        else if (b == 0xc7) extra = 2 + be(p, 1);
        else if (b == 0xc8) extra = 3 + be(p, 2);
        else if (b == 0xc9) extra = 5 + be(p, 4);
        else if (b == 0xcc || b == 0xd0) extra = 1;
        else if (b == 0xcd || b == 0xd1) extra = 2;
        else if (b == 0xca || b == 0xce || b == 0xd2) extra = 4;
        else if (b == 0xcb || b == 0xcf || b == 0xd3) extra = 8;
        else if (b >= 0xd4 && b <= 0xd8) extra = 1 + (1u << (b - 0xd4));
        else if (b == 0xdc) { items = be(p, 2); extra = 2; }
        else if (b == 0xdd) { items = be(p, 4); extra = 4; }
        else if (b == 0xde) { items = 2 * be(p, 2); extra = 2; }
        else if (b == 0xdf) { items = 2 * be(p, 4); extra = 4; }
        else return 0;
        if (extra > (u32)(in_end - p)) return 0;
        p += extra;
        left += items;
    }
    return p;
}

/* If a str is at p, set *s and *n to its bytes and return 1. */
static int read_str(const u8 *p, const u8 **s, u32 *n) {
    u8 b = *p;
    if ((b & 0xe0) == 0xa0) { *n = b & 0x1f; *s = p + 1; }
    else if (b == 0xd9) { *n = p[1]; *s = p + 2; }
    else if (b == 0xda) { *n = be(p + 1, 2); *s = p + 3; }
    else return 0;
    return *s + *n <= in_end;
}

/* If a bin is at p, set *s and *n to its bytes and return 1. */
static int read_bin(const u8 *p, const u8 **s, u32 *n) {
    u8 b = *p;
    if (b == 0xc4) { *n = p[1]; *s = p + 2; }
    else if (b == 0xc5) { *n = be(p + 1, 2); *s = p + 3; }
    else if (b == 0xc6) { *n = be(p + 1, 4); *s = p + 5; }
    else return 0;
    return *s + *n <= in_end;
}

static int eq(const u8 *a, const char *b, u32 n) {
    for (u32 i = 0; i < n; i++) if (a[i] != (u8)b[i]) return 0;
    return b[n] == 0;
}

/* The value under the str key `key` in the map at p, or 0. */
static const u8 *map_get(const u8 *p, const char *key) {
    if (!p) return 0;
    u32 n; u8 b = *p;
    if ((b & 0xf0) == 0x80) { n = b & 0x0f; p += 1; }
    else if (b == 0xde) { n = be(p + 1, 2); p += 3; }
    else if (b == 0xdf) { n = be(p + 1, 4); p += 5; }
    else return 0;
    while (n-- && p) {
        const u8 *s; u32 len;
        const u8 *value = skip(p);
        if (!value) return 0;
        if (read_str(p, &s, &len) && eq(s, key, len)) return value;
        p = skip(value);
    }
    return 0;
}

/* ---- msgpack writing ---- */
static u8 *put(u8 *o, const void *src, u32 n) { memcpy(o, src, n); return o + n; }
static u8 *put_str(u8 *o, const char *s) {
    u32 n = 0; while (s[n]) n++;
    *o++ = (u8)(0xa0 | n);  /* only short constant keys here */
    return put(o, s, n);
}
static u8 *put_u32(u8 *o, u32 v) {
    *o++ = 0xce; *o++ = (u8)(v >> 24); *o++ = (u8)(v >> 16); *o++ = (u8)(v >> 8); *o++ = (u8)v;
    return o;
}

static u64 pack(const u8 *p, u32 n) { return ((u64)(u32)p << 32) | n; }
static const u8 EMPTY[1] = {0x80}; /* {}: no change */

EXPORT("reduce") u64 reduce(const u8 *in, u32 in_len) {
    in_end = in + in_len;
    const u8 *action = map_get(in, "action");
    const u8 *v, *agent, *old = 0;
    u32 alen, olen = 0;
    if (!action) return pack(EMPTY, 1);
    if (!(v = map_get(action, "type")) || !read_str(v, &agent, &alen) || !eq(agent, "move_agent", alen))
        return pack(EMPTY, 1);
    if (!(v = map_get(action, "outcome")) || !read_str(v, &agent, &alen) || !eq(agent, "applied", alen))
        return pack(EMPTY, 1);
    if (!(v = map_get(action, "agent_id")) || !read_str(v, &agent, &alen) || alen == 0 || alen > 64)
        return pack(EMPTY, 1);
    if ((v = map_get(in, "state"))) read_bin(v, &old, &olen);

    /* new state = old state with this agent's count incremented, or a record appended */
    u8 *state = alloc(olen + alen + 5);
    if (!state) __builtin_trap();
    memcpy(state, old, olen);
    u32 slen = olen, moves = 0, i = 0;
    while (i + 5 <= olen) {
        u32 n = state[i], at = i + 1 + n, j;
        if (at + 4 > olen) break;
        if (n == alen) {
            for (j = 0; j < n && state[i + 1 + j] == agent[j]; j++) {}
            if (j == n) {
                moves = (u32)state[at] | (u32)state[at + 1] << 8 | (u32)state[at + 2] << 16 | (u32)state[at + 3] << 24;
                moves++;
                break;
            }
        }
        i = at + 4;
    }
    if (moves == 0) {
        moves = 1;
        state[slen++] = (u8)alen;
        memcpy(state + slen, agent, alen);
        slen += alen;
        i = slen - alen - 1;
    }
    u32 at = i + 1 + alen;
    state[at] = (u8)moves; state[at + 1] = (u8)(moves >> 8);
    state[at + 2] = (u8)(moves >> 16); state[at + 3] = (u8)(moves >> 24);
    if (slen < at + 4) slen = at + 4;

    /* {"new_state": bin, "emits": [{"kind": "counter.moved", "data": {"agent_id": str, "moves": int}}]} */
    u8 *out = alloc(slen + alen + 96), *o = out;
    if (!out) __builtin_trap();
    *o++ = 0x82;
    o = put_str(o, "new_state");
    *o++ = 0xc6; *o++ = (u8)(slen >> 24); *o++ = (u8)(slen >> 16); *o++ = (u8)(slen >> 8); *o++ = (u8)slen;
    o = put(o, state, slen);
    o = put_str(o, "emits");
    *o++ = 0x91;
    *o++ = 0x82;
    o = put_str(o, "kind");
    o = put_str(o, "counter.moved");
    o = put_str(o, "data");
    *o++ = 0x82;
    o = put_str(o, "agent_id");
    *o++ = 0xd9; *o++ = (u8)alen;
    o = put(o, agent, alen);
    o = put_str(o, "moves");
    o = put_u32(o, moves);
    return pack(out, (u32)(o - out));
}
