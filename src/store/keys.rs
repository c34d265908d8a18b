//! The database key of every user and item id, kept in memory by the writer and by `funkrec import` (each loads it on its own connection).
//!
//! Ids are never renumbered or removed, so a key once known stays right. Keys added
//! since the last [`Keys::settle`] are logged, so the caller can forget them when the
//! transaction that inserted their rows rolls back ([`Keys::forget_since`]) or write
//! their rows in bulk ([`Keys::take_added`]).

/// The two id tables.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Table {
    Users,
    Items,
}

impl Table {
    /// The table's name in SQL.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::Items => "items",
        }
    }

    /// Reads every `(key, id)` of the table (what [`Keys::new`] takes).
    pub(crate) fn load_sql(self) -> &'static str {
        match self {
            Table::Users => "SELECT id, ext_id FROM users",
            Table::Items => "SELECT id, ext_id FROM items",
        }
    }
}

/// One table's ids and the next key nobody has taken.
#[derive(Debug, Default)]
struct KeyMap {
    map: foldhash::HashMap<Box<str>, i64>,
    next: i64,
}

impl KeyMap {
    fn new(rows: Vec<(i64, String)>) -> KeyMap {
        let next = rows.iter().map(|r| r.0).max().unwrap_or(0) + 1;
        KeyMap {
            map: rows.into_iter().map(|(k, id)| (id.into(), k)).collect(),
            next,
        }
    }
}

/// Keys of the user and item ids known so far, and a log of the ones added since the
/// last [`Keys::settle`].
#[derive(Debug, Default)]
pub(crate) struct Keys {
    users: KeyMap,
    items: KeyMap,
    added: Vec<(Table, Box<str>, i64)>,
}

impl Keys {
    /// Keys from the `(key, id)` rows of [`Table::load_sql`] for users and items.
    pub(crate) fn new(users: Vec<(i64, String)>, items: Vec<(i64, String)>) -> Keys {
        Keys {
            users: KeyMap::new(users),
            items: KeyMap::new(items),
            added: Vec::new(),
        }
    }

    fn table(&mut self, table: Table) -> &mut KeyMap {
        match table {
            Table::Users => &mut self.users,
            Table::Items => &mut self.items,
        }
    }

    /// The key of `id`, if known.
    pub(crate) fn get(&self, table: Table, id: &str) -> Option<i64> {
        match table {
            Table::Users => self.users.map.get(id).copied(),
            Table::Items => self.items.map.get(id).copied(),
        }
    }

    /// Remembers the key of a row that is committed already (read from the database).
    pub(crate) fn insert_committed(&mut self, table: Table, id: &str, key: i64) {
        let t = self.table(table);
        t.next = t.next.max(key + 1);
        t.map.insert(id.into(), key);
    }

    /// Remembers the key of a row the open transaction inserted (logged until
    /// [`Keys::settle`]).
    pub(crate) fn insert_added(&mut self, table: Table, id: &str, key: i64) {
        self.insert_committed(table, id, key);
        self.added.push((table, id.into(), key));
    }

    /// The key of `id`, or (logged as added) the next free key when `id` is unknown.
    pub(crate) fn get_or_assign(&mut self, table: Table, id: &str) -> i64 {
        if let Some(k) = self.get(table, id) {
            return k;
        }
        let key = self.table(table).next;
        self.insert_added(table, id, key);
        key
    }

    /// How many keys were added since the last [`Keys::settle`] (a mark for
    /// [`Keys::forget_since`]).
    pub(crate) fn mark(&self) -> usize {
        self.added.len()
    }

    /// The rows of the added keys are committed: clears the log.
    pub(crate) fn settle(&mut self) {
        self.added.clear();
    }

    /// Forgets the keys added since `mark` (their rows were rolled back).
    pub(crate) fn forget_since(&mut self, mark: usize) {
        let gone: Vec<_> = self.added.drain(mark..).collect();
        for (table, id, key) in gone.into_iter().rev() {
            let t = self.table(table);
            t.map.remove(&id);
            t.next = t.next.min(key);
        }
    }

    /// The added `(key, id)` pairs of `table`, in the order they were added, taken out
    /// of the log (the caller writes their rows).
    pub(crate) fn take_added(&mut self, table: Table) -> Vec<(i64, Box<str>)> {
        let mut taken = Vec::new();
        self.added.retain_mut(|(t, id, key)| {
            if *t != table {
                return true;
            }
            taken.push((*key, std::mem::take(id)));
            false
        });
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_keys_follow_the_largest_loaded_one_and_rollback_frees_them() {
        let mut keys = Keys::new(vec![(7, "a".into()), (3, "b".into())], Vec::new());
        assert_eq!(keys.get_or_assign(Table::Users, "b"), 3);
        assert_eq!(keys.get_or_assign(Table::Users, "c"), 8);
        assert_eq!(keys.get_or_assign(Table::Items, "x"), 1);
        let mark = keys.mark();
        assert_eq!(keys.get_or_assign(Table::Users, "d"), 9);
        keys.forget_since(mark);
        assert_eq!(keys.get(Table::Users, "d"), None);
        assert_eq!(keys.get_or_assign(Table::Users, "e"), 9, "9 is free again");
        assert_eq!(
            keys.take_added(Table::Users),
            vec![(8, "c".into()), (9, "e".into())]
        );
        assert_eq!(keys.take_added(Table::Items), vec![(1, "x".into())]);
        assert_eq!(keys.mark(), 0);
        keys.insert_committed(Table::Items, "y", 40);
        assert_eq!(keys.get_or_assign(Table::Items, "z"), 41);
    }
}
