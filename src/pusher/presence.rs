//! Presence for Pusher channels, kept by the broker
//! ([`crate::broker::presence`]): on one node in its channel state, across
//! nodes in Redis with per-node ownership and expiry.
//!
//! Every Pusher subscription enters its channel's presence (so occupancy,
//! `subscription_count` and the `channel_occupied` / `channel_vacated`
//! webhooks are cluster-wide); a presence subscription enters as its user.
//! This file holds what the broker needs from the Pusher side: the formats
//! of the member events it publishes (`pusher_internal:member_added` and
//! `member_removed`), the close that terminates a user's connections, the
//! observer that turns changes into webhooks, and the snapshot's JSON.

use std::sync::Arc;

use super::app::App;
use super::protocol;
use super::webhook::Webhooks;
use crate::broker::presence::{self, Change, Events, Member};
use crate::broker::{Encoded, Format, Meta};
use crate::push::envelope::json_str;
use crate::server::Frame;

/// `pusher_internal:member_added` (data: user and info).
pub const MEMBER_ADDED: Format = Format(20);
/// `pusher_internal:member_removed` (data: the user).
pub const MEMBER_REMOVED: Format = Format(21);
/// Closes the subscribers (a signed-in user's connections) with 4009.
pub const TERMINATE: Format = Format(22);

/// The Pusher channel of a broker topic (`pusher/{app id}/{channel}`).
pub fn channel_of(topic: &str) -> &str {
    topic.splitn(3, '/').nth(2).unwrap_or(topic)
}

fn member_added(m: &Meta<'_>) -> Encoded {
    let (user, info) = presence::parse_member_event(m.data);
    let info = if info.is_empty() { "null" } else { info };
    let data = format!("{{\"user_id\":{},\"user_info\":{info}}}", json_str(user));
    Encoded::whole(Frame::text(&protocol::event(
        "pusher_internal:member_added",
        Some(channel_of(m.channel)),
        &json_str(&data),
        None,
    )))
}

fn member_removed(m: &Meta<'_>) -> Encoded {
    let (user, _) = presence::parse_member_event(m.data);
    let data = format!("{{\"user_id\":{}}}", json_str(user));
    Encoded::whole(Frame::text(&protocol::event(
        "pusher_internal:member_removed",
        Some(channel_of(m.channel)),
        &json_str(&data),
        None,
    )))
}

fn terminate(_: &Meta<'_>) -> Encoded {
    Encoded::whole(Frame::close(
        protocol::UNAUTHORIZED,
        "connection terminated by the server",
    ))
}

/// Register the formats (once per process; harmless again).
pub fn register_formats() {
    let ok = MEMBER_ADDED.register(member_added)
        & MEMBER_REMOVED.register(member_removed)
        & TERMINATE.register(terminate);
    assert!(ok, "Pusher formats 20-22 are taken by another function");
}

/// The events of an app's channels: member events in the Pusher formats,
/// changes to webhooks when there are any.
pub fn events(app: &Arc<App>, webhooks: Option<&Arc<Webhooks>>) -> Events {
    let observer = webhooks.map(|w| {
        let (w, app) = (w.clone(), app.clone());
        Arc::new(move |topic: &str, change: &Change| {
            w.emit(&app, hook(channel_of(topic), change));
        }) as presence::Observer
    });
    Events {
        added: MEMBER_ADDED,
        removed: MEMBER_REMOVED,
        observer,
    }
}

/// The webhook event of a change.
fn hook(channel: &str, change: &Change) -> String {
    let ch = json_str(channel);
    match change {
        Change::Occupied => format!("{{\"name\":\"channel_occupied\",\"channel\":{ch}}}"),
        Change::Vacated => format!("{{\"name\":\"channel_vacated\",\"channel\":{ch}}}"),
        Change::MemberAdded(u) => format!(
            "{{\"name\":\"member_added\",\"channel\":{ch},\"user_id\":{}}}",
            json_str(u)
        ),
        Change::MemberRemoved(u) => format!(
            "{{\"name\":\"member_removed\",\"channel\":{ch},\"user_id\":{}}}",
            json_str(u)
        ),
    }
}

/// `{"presence":{"ids":[...],"hash":{id:info},"count":N}}` (members sorted
/// by user).
pub fn snapshot(members: &[Member]) -> String {
    let ids: Vec<String> = members.iter().map(|m| json_str(&m.user)).collect();
    let hash: Vec<String> = members
        .iter()
        .map(|m| format!("{}:{}", json_str(&m.user), m.info))
        .collect();
    format!(
        "{{\"presence\":{{\"ids\":[{}],\"hash\":{{{}}},\"count\":{}}}}}",
        ids.join(","),
        hash.join(","),
        members.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Epoch;

    #[test]
    fn member_events_and_snapshots_are_pusher_json() {
        register_formats();
        let meta = |data: &'static [u8]| Meta {
            channel: "pusher/1/presence-room",
            seq: 3,
            epoch: Epoch(1),
            data,
        };
        let d = presence::member_added_data("7", "{\"name\":\"a\"}");
        let d: &'static [u8] = Box::leak(d.into_boxed_slice());
        let text = |f: Frame| {
            let b = f.bytes();
            String::from_utf8(b[crate::protocol::encode::header_len(b)..].to_vec()).unwrap()
        };
        let added = text(MEMBER_ADDED.encode(&meta(d)).frame);
        assert_eq!(
            added,
            r#"{"event":"pusher_internal:member_added","channel":"presence-room","data":"{\"user_id\":\"7\",\"user_info\":{\"name\":\"a\"}}"}"#
        );
        assert!(text(MEMBER_REMOVED.encode(&meta(b"7")).frame)
            .contains(r#""data":"{\"user_id\":\"7\"}""#));
        assert_eq!(
            TERMINATE.encode(&meta(b"")).frame.as_close(),
            Some((4009, "connection terminated by the server"))
        );
        let m = vec![Member {
            user: "1".into(),
            info: "{\"n\":1}".into(),
        }];
        assert_eq!(
            snapshot(&m),
            r#"{"presence":{"ids":["1"],"hash":{"1":{"n":1}},"count":1}}"#
        );
        assert_eq!(channel_of("pusher/app-1/cache-x"), "cache-x");
        assert_eq!(
            hook("presence-a", &Change::MemberRemoved("u".into())),
            r#"{"name":"member_removed","channel":"presence-a","user_id":"u"}"#
        );
    }
}
