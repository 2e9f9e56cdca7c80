//! Typed slabs: connections and peers are addressed by [`ConnId`] and [`PeerIndex`], so that
//! one cannot be used where the other is meant.

use std::marker::PhantomData;
use std::ops::{Index, IndexMut};

use slab::Slab;

/// A connection's slot in its shard. Reused after the connection is freed: pair it with the
/// connection's generation wherever it may outlive the connection (timers, `user_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ConnId(pub(crate) usize);

/// A peer's slot in its shard (the engine-wide key is `PeerShared::key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PeerIndex(pub(crate) usize);

/// An id that addresses a [`Slots`].
pub(crate) trait SlotId: Copy {
    fn from_index(index: usize) -> Self;
    fn index(self) -> usize;
}

impl SlotId for ConnId {
    fn from_index(index: usize) -> ConnId {
        ConnId(index)
    }

    fn index(self) -> usize {
        self.0
    }
}

impl SlotId for PeerIndex {
    fn from_index(index: usize) -> PeerIndex {
        PeerIndex(index)
    }

    fn index(self) -> usize {
        self.0
    }
}

/// A slab of `T` addressed by `I`.
#[derive(Debug)]
pub(crate) struct Slots<I, T> {
    slab: Slab<T>,
    _id: PhantomData<fn(I) -> I>,
}

impl<I: SlotId, T> Slots<I, T> {
    pub(crate) fn new() -> Slots<I, T> {
        Slots {
            slab: Slab::new(),
            _id: PhantomData,
        }
    }

    pub(crate) fn insert(&mut self, value: T) -> I {
        I::from_index(self.slab.insert(value))
    }

    /// # Panics
    ///
    /// If `id` is vacant.
    pub(crate) fn remove(&mut self, id: I) -> T {
        self.slab.remove(id.index())
    }

    pub(crate) fn get_mut(&mut self, id: I) -> Option<&mut T> {
        self.slab.get_mut(id.index())
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (I, &mut T)> {
        self.slab.iter_mut().map(|(i, v)| (I::from_index(i), v))
    }

    pub(crate) fn get(&self, id: I) -> Option<&T> {
        self.slab.get(id.index())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (I, &T)> {
        self.slab.iter().map(|(i, v)| (I::from_index(i), v))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}

impl<I: SlotId, T> Index<I> for Slots<I, T> {
    type Output = T;

    fn index(&self, id: I) -> &T {
        &self.slab[id.index()]
    }
}

impl<I: SlotId, T> IndexMut<I> for Slots<I, T> {
    fn index_mut(&mut self, id: I) -> &mut T {
        &mut self.slab[id.index()]
    }
}
