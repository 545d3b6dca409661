//! A worker's topic table: which of its connections subscribe to what.
//!
//! Each topic keeps a dense list of subscriber keys (fan-out walks a plain
//! slice); each connection keeps `(topic, position)` pairs so that
//! unsubscribing is O(subscriptions of that connection), not O(subscribers).

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

pub(crate) struct Topic {
    pub name: Arc<str>,
    pub subscribers: Vec<u32>,
}

#[derive(Default)]
pub(crate) struct Topics {
    by_name: HashMap<Arc<str>, u32>,
    list: Slab<Topic>,
}

/// One subscription held by a connection: topic id and position in its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sub {
    pub topic: u32,
    pub pos: u32,
}

impl Topics {
    pub fn id(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// The name of topic `id`.
    pub fn name(&self, id: u32) -> Option<Arc<str>> {
        self.list.get(id as usize).map(|t| t.name.clone())
    }

    pub fn subscribers(&self, id: u32) -> &[u32] {
        self.list
            .get(id as usize)
            .map(|t| t.subscribers.as_slice())
            .unwrap_or(&[])
    }

    pub fn subscriber_count(&self, name: &str) -> usize {
        self.id(name)
            .map(|id| self.subscribers(id).len())
            .unwrap_or(0)
    }

    /// Number of topics with at least one local subscriber.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Add `key` to `name`; returns the subscription to record on the connection.
    pub fn subscribe(&mut self, name: &str, key: usize) -> Sub {
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None => {
                let name: Arc<str> = Arc::from(name);
                let id = self.list.insert(Topic {
                    name: name.clone(),
                    subscribers: Vec::new(),
                }) as u32;
                self.by_name.insert(name, id);
                id
            }
        };
        let t = &mut self.list[id as usize];
        t.subscribers.push(key as u32);
        Sub {
            topic: id,
            pos: (t.subscribers.len() - 1) as u32,
        }
    }

    /// Remove the subscription `sub`. If another connection's entry moved into
    /// its place, returns that connection's key and its new position.
    pub fn unsubscribe(&mut self, sub: Sub) -> Option<(usize, u32)> {
        let t = self.list.get_mut(sub.topic as usize)?;
        let pos = sub.pos as usize;
        if pos >= t.subscribers.len() {
            return None;
        }
        t.subscribers.swap_remove(pos);
        let moved = t.subscribers.get(pos).map(|&k| (k as usize, sub.pos));
        if t.subscribers.is_empty() {
            let name = t.name.clone();
            self.by_name.remove(&name);
            self.list.remove(sub.topic as usize);
        }
        moved
    }
}
