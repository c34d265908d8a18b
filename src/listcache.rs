//! The served top-N lists of one snapshot, per user, reused while nothing they depend on changes.
//!
//! A recommendation list is a function of the snapshot, the user's vector and rated
//! items (the snapshot's own, or folded in as of one change: [`crate::foldin::Plan`]),
//! whether the user is forgotten, the set of retired items and `n`. An entry records all
//! of them but the snapshot (the cache lives in it and goes away with it), and is used
//! only when every one matches the request's: the user's next write or delete, a
//! retirement or a new model makes the next request rank again. The cache is bounded:
//! past the configured number of users it starts again empty, and lists longer than
//! [`MAX_CACHED_N`] are not kept.

use std::sync::{Arc, Mutex};

/// Longer lists are ranked on every request (they are rare, and large to keep).
pub const MAX_CACHED_N: usize = 100;

/// What a list was computed from (besides the snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListKey {
    /// [`crate::foldin::Plan::user_state`]: the snapshot's vector (None) or the change
    /// folded in.
    pub user_state: Option<u64>,
    pub forgotten: bool,
    /// [`crate::forget::Forgets::retired_generation`] before the list was ranked.
    pub retired: u64,
    pub n: usize,
}

/// A ranked list as the handler serves it: model item indices with their scores.
#[derive(Debug, Clone)]
pub struct List {
    pub fallback: bool,
    pub folded_in: bool,
    pub items: Arc<[(u32, f32)]>,
}

/// The lists of one snapshot (see the module docs).
#[derive(Debug, Default)]
pub struct ListCache {
    inner: Mutex<foldhash::HashMap<String, (ListKey, List)>>,
}

impl ListCache {
    /// The list cached for `user` under exactly `key`.
    pub fn get(&self, user: &str, key: &ListKey) -> Option<List> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.get(user)
            .filter(|(k, _)| k == key)
            .map(|(_, l)| l.clone())
    }

    /// Keeps `list` for `user` (replacing the user's previous one), unless `key.n` is
    /// above [`MAX_CACHED_N`] or `max_users` is 0; holds at most `max_users` users.
    pub fn put(&self, user: &str, key: ListKey, list: List, max_users: usize) {
        if max_users == 0 || key.n > MAX_CACHED_N {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= max_users && !g.contains_key(user) {
            g.clear();
        }
        match g.get_mut(user) {
            Some(e) => *e = (key, list),
            None => {
                g.insert(user.to_owned(), (key, list));
            }
        }
    }

    /// Users with a cached list.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(state: Option<u64>, n: usize) -> ListKey {
        ListKey {
            user_state: state,
            forgotten: false,
            retired: 0,
            n,
        }
    }

    fn list(first: u32) -> List {
        List {
            fallback: false,
            folded_in: false,
            items: vec![(first, 4.0)].into(),
        }
    }

    #[test]
    fn a_list_is_used_only_under_the_same_key() {
        let c = ListCache::default();
        c.put("u", key(None, 10), list(1), 10);
        assert_eq!(c.get("u", &key(None, 10)).unwrap().items[0].0, 1);
        // another n, a change folded in, a forgotten user, a retirement: all miss
        assert!(c.get("u", &key(None, 5)).is_none());
        assert!(c.get("u", &key(Some(3), 10)).is_none());
        let mut k = key(None, 10);
        k.forgotten = true;
        assert!(c.get("u", &k).is_none());
        let mut k = key(None, 10);
        k.retired = 1;
        assert!(c.get("u", &k).is_none());
        assert!(c.get("v", &key(None, 10)).is_none());
        // the user's next list replaces the first
        c.put("u", key(Some(3), 10), list(2), 10);
        assert!(c.get("u", &key(None, 10)).is_none());
        assert_eq!(c.get("u", &key(Some(3), 10)).unwrap().items[0].0, 2);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn bounded_by_users_and_list_length() {
        let c = ListCache::default();
        for u in 0..5 {
            c.put(&format!("u{u}"), key(None, 10), list(u), 3);
            assert!(c.len() <= 3);
        }
        // the fourth user started the cache again: u3 and u4 are held
        assert!(c.get("u4", &key(None, 10)).is_some());
        assert!(c.get("u0", &key(None, 10)).is_none());
        c.put("long", key(None, MAX_CACHED_N + 1), list(9), 3);
        assert!(c.get("long", &key(None, MAX_CACHED_N + 1)).is_none());
        let off = ListCache::default();
        off.put("u", key(None, 10), list(1), 0);
        assert!(off.is_empty());
    }
}
