//! Training data: dense id maps and compact (user, item, rating) triples.

use std::collections::HashMap;

/// One observed rating with dense indices: 12 bytes, no padding.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Rating {
    pub user: u32,
    pub item: u32,
    pub value: f32,
}

/// Maps external string ids to dense `u32` indices and back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdMap {
    ids: Vec<String>,
    index: HashMap<String, u32>,
}

impl IdMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Index of `id`, inserting it when it is new.
    pub fn intern(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = u32::try_from(self.ids.len()).expect("more than u32::MAX ids");
        self.ids.push(id.to_owned());
        self.index.insert(id.to_owned(), i);
        i
    }

    pub fn get(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub fn id(&self, index: u32) -> &str {
        &self.ids[index as usize]
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Builds a map from ids in index order (duplicates are an error).
    pub fn from_ids(ids: Vec<String>) -> Result<Self, String> {
        let mut index = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if index.insert(id.clone(), i as u32).is_some() {
                return Err(format!("duplicate id {id:?}"));
            }
        }
        Ok(Self { ids, index })
    }
}

/// Ratings plus the id maps that give their indices meaning.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub users: IdMap,
    pub items: IdMap,
    pub ratings: Vec<Rating>,
}

impl Dataset {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one rating by external ids.
    pub fn push(&mut self, user: &str, item: &str, value: f32) {
        let user = self.users.intern(user);
        let item = self.items.intern(item);
        self.ratings.push(Rating { user, item, value });
    }

    pub fn n_users(&self) -> usize {
        self.users.len()
    }

    pub fn n_items(&self) -> usize {
        self.items.len()
    }

    pub fn len(&self) -> usize {
        self.ratings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ratings.is_empty()
    }

    /// A dataset with the same id maps and the ratings at `idx`.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        Dataset {
            users: self.users.clone(),
            items: self.items.clone(),
            ratings: idx.iter().map(|&i| self.ratings[i]).collect(),
        }
    }

    /// Mean rating (0 for an empty set), accumulated in f64.
    pub fn mean(&self) -> f64 {
        mean_of(&self.ratings)
    }
}

/// Mean of the rating values, accumulated in f64 (0 for an empty slice).
pub fn mean_of(ratings: &[Rating]) -> f64 {
    if ratings.is_empty() {
        return 0.0;
    }
    ratings.iter().map(|r| r.value as f64).sum::<f64>() / ratings.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rating_is_twelve_bytes() {
        assert_eq!(std::mem::size_of::<Rating>(), 12);
    }

    #[test]
    fn intern_is_stable_and_dense() {
        let mut m = IdMap::new();
        assert_eq!(m.intern("a"), 0);
        assert_eq!(m.intern("b"), 1);
        assert_eq!(m.intern("a"), 0);
        assert_eq!(m.get("b"), Some(1));
        assert_eq!(m.get("c"), None);
        assert_eq!(m.id(1), "b");
        assert!(IdMap::from_ids(vec!["x".into(), "x".into()]).is_err());
    }
}
