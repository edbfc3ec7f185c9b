//! The objects one client connection may use on the upstream, and the
//! grant under which it obtained each.
//!
//! Every upstream object reaches a client only inside a message the gateway
//! relays (a reply, or the arguments of a callback), so the gateway can
//! record each one with its provenance: the root; member `m` of a granted
//! object; the result of calling a granted member; an argument of a
//! callback. A request may act only on objects in this table, and only while
//! every grant on the path that led to the object still holds under the
//! identity's *current* policy — a reference obtained before a reload that
//! revoked its grant stops working at once.
//!
//! The table mirrors the upstream's reference counts (`_local_objects` in
//! `rpyc/core/protocol.py`): one count per time the object was boxed to the
//! client, minus what the client's DEL requests release, so it holds what
//! the client holds, no more.

use super::policy::GatewayPolicy;
use crate::wire::IdPack;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Most distinct upstream objects one client connection may hold through
/// the gateway.
pub(crate) const MAX_OBJECTS: usize = 16_384;

/// Longest provenance path (root → member → call result → …). Real object
/// graphs are walked a few steps deep; the bound keeps what one connection
/// can make the gateway remember proportional to what it holds.
pub(crate) const MAX_PATH: u32 = 64;

/// One step of the path by which a client obtained an object.
#[derive(Debug)]
pub(crate) enum Step {
    /// The upstream's root object.
    Root,
    /// Member `name` of the root.
    RootMember(String),
    /// Member `name` of an object of class `class`.
    Member { class: String, name: String },
    /// The result of calling the parent (an object of class `callee`).
    Call { callee: String },
    /// Anything else computed from the parent (iteration, repr, compare …):
    /// usable only through what `objects` grants for its own class.
    Derived,
    /// An argument of a request the upstream sent to the client.
    CallbackArg,
    /// Obtained under `classic = true`: valid only while it lasts.
    Classic,
}

/// A node of a provenance path; shared by everything obtained through it.
#[derive(Debug)]
pub(crate) struct Grant {
    parent: Option<Arc<Grant>>,
    step: Step,
    depth: u32,
    /// `(generation << 1) | valid` of the last check; `u64::MAX` = never.
    memo: AtomicU64,
}

/// A path would be longer than [`MAX_PATH`].
#[derive(Debug)]
pub(crate) struct TooDeep;

impl Grant {
    /// A grant obtained by `step` from `parent`.
    pub(crate) fn new(parent: Option<&Arc<Grant>>, step: Step) -> Arc<Grant> {
        let depth = parent.map_or(0, |p| p.depth.saturating_add(1));
        Arc::new(Grant { parent: parent.cloned(), step, depth, memo: AtomicU64::new(u64::MAX) })
    }

    /// [`Grant::new`], refusing paths longer than [`MAX_PATH`].
    pub(crate) fn child(parent: &Arc<Grant>, step: Step) -> Result<Arc<Grant>, TooDeep> {
        if parent.depth >= MAX_PATH {
            return Err(TooDeep);
        }
        Ok(Grant::new(Some(parent), step))
    }

    /// True if an object obtained this way may be called: it was read as a
    /// granted member.
    fn is_member(&self) -> bool {
        matches!(self.step, Step::RootMember(_) | Step::Member { .. } | Step::Classic)
    }

    fn step_holds(&self, p: &GatewayPolicy) -> bool {
        match &self.step {
            Step::Root | Step::Derived | Step::CallbackArg => true,
            Step::RootMember(name) => p.check_root_member(name).is_ok(),
            Step::Member { class, name } => p.check_member(class, name).is_ok(),
            Step::Call { callee } => {
                self.parent.as_ref().is_some_and(|g| g.is_member()) || p.callable_class(callee) || p.classic
            }
            Step::Classic => p.classic,
        }
    }

    /// True if every step from the root to this grant holds under `p`
    /// (`generation` identifies `p`; results are remembered per generation,
    /// so a long path is walked once per reload).
    pub(crate) fn holds(self: &Arc<Grant>, p: &GatewayPolicy, generation: u64) -> bool {
        let key = generation << 1;
        // Walk up to the first node already judged under this generation.
        let mut chain: Vec<&Grant> = Vec::new();
        let mut node: Option<&Grant> = Some(self);
        let mut above = true;
        while let Some(g) = node {
            let memo = g.memo.load(Ordering::Acquire);
            if memo != u64::MAX && memo & !1 == key {
                above = memo & 1 == 1;
                break;
            }
            chain.push(g);
            node = g.parent.as_deref();
        }
        for g in chain.into_iter().rev() {
            above = above && g.step_holds(p);
            g.memo.store(key | u64::from(above), Ordering::Release);
        }
        above
    }
}

/// One object the client holds.
#[derive(Debug)]
pub(crate) struct Entry {
    count: u64,
    pub grant: Arc<Grant>,
}

/// The table of one client connection.
#[derive(Debug)]
pub(crate) struct Table {
    root: IdPack,
    entries: HashMap<IdPack, Entry>,
}

/// The table is full: the client holds [`MAX_OBJECTS`] objects.
#[derive(Debug)]
pub(crate) struct Full;

impl Table {
    /// A table holding the upstream's root (obtained by the gateway itself).
    pub(crate) fn new(root: IdPack) -> Table {
        let mut entries = HashMap::new();
        entries.insert(root.clone(), Entry { count: 1, grant: Grant::new(None, Step::Root) });
        Table { root, entries }
    }

    /// The root's id-pack.
    pub(crate) fn root(&self) -> &IdPack {
        &self.root
    }

    /// The entry for `id`, if the client holds it.
    pub(crate) fn get(&self, id: &IdPack) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Records that the upstream boxed `id` to the client once more; the
    /// newest grant replaces an older one (the client just obtained it that
    /// way). The root keeps its grant.
    pub(crate) fn add(&mut self, id: IdPack, grant: &Arc<Grant>) -> Result<(), Full> {
        let is_root = id == self.root;
        if let Some(e) = self.entries.get_mut(&id) {
            e.count = e.count.saturating_add(1);
            if !is_root {
                e.grant = grant.clone();
            }
            return Ok(());
        }
        if self.entries.len() >= MAX_OBJECTS {
            return Err(Full);
        }
        self.entries.insert(id, Entry { count: 1, grant: grant.clone() });
        Ok(())
    }

    /// Applies a DEL of `count` references (as the upstream's
    /// `RefCountingColl.decref` does). The root stays: the gateway holds it.
    pub(crate) fn release(&mut self, id: &IdPack, count: u64) {
        let is_root = *id == self.root;
        if let Some(e) = self.entries.get_mut(id) {
            e.count = e.count.saturating_sub(count);
            if e.count == 0 {
                if is_root {
                    e.count = 1;
                } else {
                    self.entries.remove(id);
                }
            }
        }
    }

    /// How many distinct objects the client holds (root included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Entry {
    /// True if the object may be the target of a CALL: it was read as a
    /// granted member, or its class is granted `__call__`.
    pub(crate) fn callable(&self, class: &str, p: &GatewayPolicy) -> bool {
        self.grant.is_member() || p.callable_class(class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, i: i64) -> IdPack {
        IdPack { class_name: name.into(), class_id: 1, instance_id: i }
    }

    #[test]
    fn grants_follow_the_current_policy() {
        let root = Grant::new(None, Step::Root);
        let add = Grant::new(Some(&root), Step::RootMember("get_report".into()));
        let report = Grant::new(Some(&add), Step::Call { callee: "builtins.method".into() });
        let title = Grant::new(Some(&report), Step::Member { class: "Report".into(), name: "title".into() });
        let mut p = GatewayPolicy::default();
        p.objects.insert("Report".into(), ["title".to_string()].into());
        assert!(title.holds(&p, 1));
        // Revoke the root method: everything obtained through it goes.
        p.root_allow.insert("other".into());
        assert!(!title.holds(&p, 2) && !report.holds(&p, 2) && root.holds(&p, 2));
        // Memoized per generation: the same generation answers the same.
        assert!(!title.holds(&p, 2));
        let classic = Grant::new(Some(&root), Step::Classic);
        assert!(!classic.holds(&p, 2));
        assert!(classic.holds(&GatewayPolicy::trusted(), 3));
    }

    #[test]
    fn counts_mirror_the_upstream() {
        let mut t = Table::new(id("Root", 1));
        let g = Grant::new(None, Step::Derived);
        assert!(t.add(id("X", 2), &g).is_ok() && t.add(id("X", 2), &g).is_ok());
        t.release(&id("X", 2), 1);
        assert!(t.get(&id("X", 2)).is_some());
        t.release(&id("X", 2), 1);
        assert!(t.get(&id("X", 2)).is_none());
        t.release(&id("Root", 1), 100);
        assert!(t.get(&id("Root", 1)).is_some());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn paths_are_bounded() {
        let mut g = Grant::new(None, Step::Root);
        for _ in 0..MAX_PATH {
            g = Grant::child(&g, Step::Derived).unwrap_or_else(|_| panic!("refused too early"));
        }
        assert!(g.holds(&GatewayPolicy::default(), 1));
        assert!(Grant::child(&g, Step::Derived).is_err());
    }
}
