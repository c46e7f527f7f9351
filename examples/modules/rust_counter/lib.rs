//! rust_counter: counts each agent's applied move_agent actions and emits
//! `counter.moved {agent_id, moves}` after every move (Agent World module ABI v1; the SDK is
//! aw_sdk.rs, copied from sdk/rust/). The same behaviour in C: examples/modules/c_counter/.
//!
//! Subscribed to `move_agent` at stage `post_action` (manifest.json). State: a table of records
//! `[u8 id_len][id bytes][u32 little-endian count]`, in first-seen order.
#![no_std]

mod aw_sdk;

use aw_sdk::{Buf, Input, Output, Value};

aw_sdk::export_reducer!(count_moves);

fn count_moves(input: &Input, out: &mut Output) {
    let action = match &input.action {
        Some(a) if a.kind == "move_agent" && a.applied() => a,
        _ => return, // anything else: no change
    };
    let agent = action.agent_id.as_bytes();
    if agent.is_empty() || agent.len() > 64 {
        return;
    }
    let old = input.state.unwrap_or(&[]);
    let mut state = Buf::with_capacity(old.len() + agent.len() + 5);
    state.extend(old);
    let mut moves = 0u32;
    let mut i = 0;
    let records = state.as_mut_slice();
    while i + 5 <= records.len() {
        let n = records[i] as usize;
        let count_at = i + 1 + n;
        if count_at + 4 > records.len() {
            break; // malformed tail: ignore it
        }
        if &records[i + 1..count_at] == agent {
            let mut c = [0u8; 4];
            c.copy_from_slice(&records[count_at..count_at + 4]);
            moves = u32::from_le_bytes(c) + 1;
            records[count_at..count_at + 4].copy_from_slice(&moves.to_le_bytes());
            break;
        }
        i = count_at + 4;
    }
    if moves == 0 {
        moves = 1;
        state.push(agent.len() as u8);
        state.extend(agent);
        state.extend(&moves.to_le_bytes());
    }
    out.set_state(state.as_slice());
    out.emit(
        "counter.moved",
        &[("agent_id", Value::Str(action.agent_id)), ("moves", Value::Int(moves as i64))],
    );
}
