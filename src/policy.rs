//! Access policy: which attribute names a peer may reach
//! (mirrors `DEFAULT_CONFIG` and `Connection._check_attr` in
//! `rpyc/core/protocol.py`).
//!
//! A Rust object declares its members as *exposed* (what a Python class
//! spells `exposed_name`) or *plain* (a public or `_private` attribute, or a
//! dunder). [`AccessPolicy::resolve`] then applies Python's exact rules, so a
//! client sees `AttributeError` in exactly the places a Python server with the
//! same flags would raise it — with the same message whether or not the name
//! exists.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// RPyC's `safe_attrs` (the dunders any peer may use by default).
pub const SAFE_ATTRS: &[&str] = &[
    "__abs__",
    "__add__",
    "__and__",
    "__bool__",
    "__cmp__",
    "__contains__",
    "__delitem__",
    "__delslice__",
    "__div__",
    "__divmod__",
    "__doc__",
    "__eq__",
    "__float__",
    "__floordiv__",
    "__ge__",
    "__getitem__",
    "__getslice__",
    "__gt__",
    "__hash__",
    "__hex__",
    "__iadd__",
    "__iand__",
    "__idiv__",
    "__ifloordiv__",
    "__ilshift__",
    "__imod__",
    "__imul__",
    "__index__",
    "__int__",
    "__invert__",
    "__ior__",
    "__ipow__",
    "__irshift__",
    "__isub__",
    "__iter__",
    "__itruediv__",
    "__ixor__",
    "__le__",
    "__len__",
    "__long__",
    "__lshift__",
    "__lt__",
    "__mod__",
    "__mul__",
    "__ne__",
    "__neg__",
    "__new__",
    "__nonzero__",
    "__oct__",
    "__or__",
    "__pos__",
    "__pow__",
    "__radd__",
    "__rand__",
    "__rdiv__",
    "__rdivmod__",
    "__repr__",
    "__rfloordiv__",
    "__rlshift__",
    "__rmod__",
    "__rmul__",
    "__ror__",
    "__rpow__",
    "__rrshift__",
    "__rshift__",
    "__rsub__",
    "__rtruediv__",
    "__rxor__",
    "__setitem__",
    "__setslice__",
    "__str__",
    "__sub__",
    "__truediv__",
    "__xor__",
    "next",
    "__length_hint__",
    "__enter__",
    "__exit__",
    "__next__",
    "__format__",
];

/// The attribute-access flags of an RPyC connection.
///
/// Defaults are Python rpyc's: exposed and safe names only, read-only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AccessPolicy {
    /// Names in `safe_attrs` are reachable. Default: true.
    pub allow_safe_attrs: bool,
    /// Exposed names are reachable. Default: true.
    pub allow_exposed_attrs: bool,
    /// Names not starting with `_` are reachable. Default: false.
    pub allow_public_attrs: bool,
    /// Every name is reachable. Default: false (never on an untrusted network).
    pub allow_all_attrs: bool,
    /// GETATTR (and CALLATTR) are served at all. Default: true.
    pub allow_getattr: bool,
    /// SETATTR is served. Default: false.
    pub allow_setattr: bool,
    /// DELATTR is served. Default: false.
    pub allow_delattr: bool,
    /// PICKLE is served. Default: false; Rust objects cannot be pickled, so
    /// this only changes the error a peer gets.
    pub allow_pickle: bool,
    /// The prefix that marks exposed names. Default: `"exposed_"`.
    pub exposed_prefix: String,
    /// The safe dunders. Default: [`SAFE_ATTRS`].
    pub safe_attrs: BTreeSet<String>,
    /// If non-empty, only these root methods/attributes may be reached (by
    /// their exposed name). Default: empty (no extra restriction).
    pub allow_methods: BTreeSet<String>,
    /// Root methods/attributes that may never be reached. Default: empty.
    pub deny_methods: BTreeSet<String>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            allow_safe_attrs: true,
            allow_exposed_attrs: true,
            allow_public_attrs: false,
            allow_all_attrs: false,
            allow_getattr: true,
            allow_setattr: false,
            allow_delattr: false,
            allow_pickle: false,
            exposed_prefix: "exposed_".into(),
            safe_attrs: SAFE_ATTRS.iter().map(|s| s.to_string()).collect(),
            allow_methods: BTreeSet::new(),
            deny_methods: BTreeSet::new(),
        }
    }
}

/// Which access is being checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// GETATTR / CALLATTR.
    Get,
    /// SETATTR.
    Set,
    /// DELATTR.
    Del,
}

/// Whether a member was declared exposed or plain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Reachable by default (Python: `exposed_<name>`).
    Exposed,
    /// A plain attribute: reachable by policy (public/safe/all).
    Plain,
}

impl AccessPolicy {
    /// Python's classic-mode flags (`SlaveService.on_connect`): everything
    /// allowed. Only for trusted peers.
    pub fn classic() -> AccessPolicy {
        AccessPolicy {
            allow_all_attrs: true,
            allow_pickle: true,
            allow_setattr: true,
            allow_delattr: true,
            allow_exposed_attrs: false,
            ..AccessPolicy::default()
        }
    }

    /// Sets `allow_public_attrs`.
    pub fn with_public_attrs(mut self, on: bool) -> Self {
        self.allow_public_attrs = on;
        self
    }

    fn permitted(&self, access: Access) -> bool {
        match access {
            Access::Get => self.allow_getattr,
            Access::Set => self.allow_setattr,
            Access::Del => self.allow_delattr,
        }
    }

    /// Applies `_check_attr`: given the name the peer asked for and a lookup
    /// of the object's members, returns the member name to use, or `None`
    /// (the caller raises `AttributeError("cannot access 'name'")`).
    ///
    /// `lookup(n)` answers whether the object has a member called `n` and
    /// with which visibility; exposed members are found under their bare
    /// name.
    pub fn resolve<'n>(
        &self,
        name: &'n str,
        access: Access,
        lookup: impl Fn(&str) -> Option<Visibility>,
    ) -> Option<Resolved<'n>> {
        if !self.permitted(access) {
            return None;
        }
        let prefix: &str = if self.allow_exposed_attrs { &self.exposed_prefix } else { "" };
        // Python attribute names of our members: exposed member `m` is
        // `prefix + m`; plain member `m` is `m`.
        let has_plain = |n: &str| matches!(lookup(n), Some(Visibility::Plain));
        let has_exposed_named = |n: &str| -> Option<String> {
            // Does Python attribute `n` name an exposed member?
            let bare = n.strip_prefix(self.exposed_prefix.as_str())?;
            matches!(lookup(bare), Some(Visibility::Exposed)).then(|| bare.to_string())
        };
        let hasattr = |n: &str| has_plain(n) || has_exposed_named(n).is_some();

        let mut plain = self.allow_all_attrs;
        plain |= self.allow_exposed_attrs && !prefix.is_empty() && name.starts_with(prefix);
        plain |= self.allow_safe_attrs && self.safe_attrs.contains(name);
        plain |= self.allow_public_attrs && !name.starts_with('_');
        let has_exposed = !prefix.is_empty() && matches!(lookup(name), Some(Visibility::Exposed));

        let chosen: Option<Resolved<'n>> = if plain && (!has_exposed || hasattr(name)) {
            // Python looks up `name` itself.
            if has_plain(name) {
                Some(Resolved::Member(name.to_string()))
            } else {
                has_exposed_named(name).map(Resolved::Member).or(Some(Resolved::Missing(name)))
            }
        } else if has_exposed {
            Some(Resolved::Member(name.to_string()))
        } else {
            None
        };
        chosen
    }

    /// Applies the per-service method allow/deny lists to a resolved root
    /// member name.
    pub fn method_allowed(&self, member: &str) -> bool {
        if self.deny_methods.contains(member) {
            return false;
        }
        self.allow_methods.is_empty() || self.allow_methods.contains(member)
    }
}

/// The outcome of a permitted lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved<'n> {
    /// Use this member (its declared name).
    Member(String),
    /// Policy allows the name but the object has no such member (Python
    /// would raise its own `AttributeError` from the real lookup).
    Missing(&'n str),
}

/// Policies chosen per identity: the access-policy resolver.
///
/// Resolution order: the identity's own entry, then the first of the
/// credentials' groups that has an entry, then `anonymous` for connections
/// without an identity (if set), then `default`.
///
/// ```toml
/// [default]                 # everyone else: exposed names only
///
/// [policies.ops]            # a named policy
/// allow_public_attrs = true
///
/// [policies.calculator]
/// allow_methods = ["add", "get_answer"]
///
/// [identities]              # identity -> policy name
/// alice = "ops"
/// bob = "calculator"
///
/// [groups]                  # group -> policy name
/// ops = "ops"
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicySet {
    /// The policy for identities that match nothing else.
    pub default: AccessPolicy,
    /// The policy for connections without an identity; `None` uses `default`.
    pub anonymous: Option<AccessPolicy>,
    /// Named policies.
    pub policies: std::collections::BTreeMap<String, AccessPolicy>,
    /// Identity → policy name.
    pub identities: std::collections::BTreeMap<String, String>,
    /// Group → policy name.
    pub groups: std::collections::BTreeMap<String, String>,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown fields.
    #[error("invalid policy file {path}: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An identity or group names a policy that is not defined.
    #[error("policy file {path}: {what} refers to undefined policy {name:?} (define it under [policies.{name}])")]
    UndefinedPolicy {
        /// The file.
        path: String,
        /// E.g. `identity "alice"`.
        what: String,
        /// The missing policy name.
        name: String,
    },
}

impl PolicySet {
    /// Everyone gets `policy`.
    pub fn uniform(policy: AccessPolicy) -> PolicySet {
        PolicySet { default: policy, ..PolicySet::default() }
    }

    /// Parses TOML text (see the type docs for the format).
    #[cfg(feature = "toml")]
    #[cfg_attr(docsrs, doc(cfg(feature = "toml")))]
    pub fn from_toml(text: &str) -> Result<PolicySet, PolicyError> {
        Self::parse(text, "<string>")
    }

    /// Loads a TOML file.
    #[cfg(feature = "toml")]
    #[cfg_attr(docsrs, doc(cfg(feature = "toml")))]
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<PolicySet, PolicyError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io { path: shown.clone(), source })?;
        Self::parse(&text, &shown)
    }

    #[cfg(feature = "toml")]
    fn parse(text: &str, path: &str) -> Result<PolicySet, PolicyError> {
        let set: PolicySet =
            toml::from_str(text).map_err(|e| PolicyError::Parse { path: path.to_string(), message: e.to_string() })?;
        for (what, map) in [("identity", &set.identities), ("group", &set.groups)] {
            for (key, name) in map {
                if !set.policies.contains_key(name) {
                    return Err(PolicyError::UndefinedPolicy {
                        path: path.to_string(),
                        what: format!("{what} {key:?}"),
                        name: name.clone(),
                    });
                }
            }
        }
        Ok(set)
    }

    /// Names a policy.
    pub fn with_policy(mut self, name: &str, policy: AccessPolicy) -> Self {
        self.policies.insert(name.to_string(), policy);
        self
    }

    /// Maps an identity to a named policy.
    pub fn with_identity(mut self, identity: &str, policy: &str) -> Self {
        self.identities.insert(identity.to_string(), policy.to_string());
        self
    }

    /// Maps a group to a named policy.
    pub fn with_group(mut self, group: &str, policy: &str) -> Self {
        self.groups.insert(group.to_string(), policy.to_string());
        self
    }

    /// The policy for a connection with these credentials.
    pub fn resolve(&self, creds: &crate::identity::Credentials) -> AccessPolicy {
        self.resolve_name(creds).and_then(|n| self.policies.get(n)).cloned().unwrap_or_else(|| {
            match (&creds.identity, &self.anonymous) {
                (None, Some(anon)) => anon.clone(),
                _ => self.default.clone(),
            }
        })
    }

    /// The name of the policy chosen for these credentials (`None` = the
    /// default or anonymous policy).
    pub fn resolve_name(&self, creds: &crate::identity::Credentials) -> Option<&str> {
        if let Some(id) = &creds.identity {
            if let Some(name) = self.identities.get(id) {
                return Some(name);
            }
        }
        creds.groups.iter().find_map(|g| self.groups.get(g)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: &str) -> Option<Visibility> {
        match n {
            "add" => Some(Visibility::Exposed),
            "public" | "_private" | "__len__" | "secret" => Some(Visibility::Plain),
            _ => None,
        }
    }

    #[test]
    fn default_policy_matches_python() {
        let p = AccessPolicy::default();
        let r = |n| p.resolve(n, Access::Get, members);
        assert_eq!(r("add"), Some(Resolved::Member("add".into())));
        assert_eq!(r("exposed_add"), Some(Resolved::Member("add".into())));
        assert_eq!(r("__len__"), Some(Resolved::Member("__len__".into())));
        assert_eq!(r("public"), None);
        assert_eq!(r("secret"), None);
        assert_eq!(r("_private"), None);
        assert_eq!(r("nothing"), None);
        assert_eq!(p.resolve("add", Access::Set, members), None);
    }

    #[test]
    #[cfg(feature = "toml")]
    fn policy_file_parses_and_resolves() {
        let set = PolicySet::from_toml(
            r#"
            [default]
            [policies.ops]
            allow_public_attrs = true
            [policies.calc]
            allow_methods = ["add"]
            [identities]
            bob = "calc"
            [groups]
            ops = "ops"
            "#,
        );
        let set = match set {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let mut alice = crate::identity::Credentials { identity: Some("alice".into()), ..Default::default() };
        assert!(!set.resolve(&alice).allow_public_attrs);
        alice.groups.push("ops".into());
        assert!(set.resolve(&alice).allow_public_attrs);
        let bob = crate::identity::Credentials { identity: Some("bob".into()), ..Default::default() };
        assert!(set.resolve(&bob).method_allowed("add") && !set.resolve(&bob).method_allowed("foo"));
        let err = PolicySet::from_toml("[identities]\nx = \"nope\"\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("undefined policy \"nope\""), "{err}");
        let err = PolicySet::from_toml("[default]\nallow_everything = true\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("allow_everything"), "{err}");
    }

    #[test]
    fn public_and_all() {
        let p = AccessPolicy::default().with_public_attrs(true);
        assert_eq!(p.resolve("public", Access::Get, members), Some(Resolved::Member("public".into())));
        assert_eq!(p.resolve("_private", Access::Get, members), None);
        assert_eq!(p.resolve("nothing", Access::Get, members), Some(Resolved::Missing("nothing")));
        let all = AccessPolicy { allow_all_attrs: true, ..AccessPolicy::default() };
        assert_eq!(all.resolve("_private", Access::Get, members), Some(Resolved::Member("_private".into())));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::identity::Credentials;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-d]{1,2}"
    }

    fn policy() -> impl Strategy<Value = AccessPolicy> {
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(a, b, c, d)| AccessPolicy {
            allow_public_attrs: a,
            allow_all_attrs: b,
            allow_setattr: c,
            allow_exposed_attrs: d,
            ..AccessPolicy::default()
        })
    }

    fn set() -> impl Strategy<Value = PolicySet> {
        (
            policy(),
            proptest::collection::btree_map(name(), policy(), 0..4),
            proptest::collection::btree_map(name(), name(), 0..4),
            proptest::collection::btree_map(name(), name(), 0..4),
        )
            .prop_map(|(default, policies, ids, groups)| {
                let known: Vec<String> = policies.keys().cloned().collect();
                let pick = |n: &String| known.iter().find(|k| *k == n).cloned();
                PolicySet {
                    default,
                    anonymous: None,
                    identities: ids.iter().filter_map(|(k, v)| pick(v).map(|p| (k.clone(), p))).collect(),
                    groups: groups.iter().filter_map(|(k, v)| pick(v).map(|p| (k.clone(), p))).collect(),
                    policies,
                }
            })
    }

    proptest! {
        #[test]
        fn identity_entry_wins(set in set(), id in name(), groups in proptest::collection::vec(name(), 0..3)) {
            let creds = Credentials { identity: Some(id.clone()), groups, ..Credentials::default() };
            let got = set.resolve(&creds);
            if let Some(p) = set.identities.get(&id) {
                prop_assert_eq!(&got, &set.policies[p]);
            }
        }

        #[test]
        fn unmatched_identities_get_the_default(set in set(), id in "[x-z]{3}") {
            let creds = Credentials { identity: Some(id), ..Credentials::default() };
            prop_assert_eq!(set.resolve(&creds), set.default.clone());
        }

        #[test]
        fn resolution_is_one_of_the_configured_policies(set in set(), id in name(), groups in proptest::collection::vec(name(), 0..3)) {
            let creds = Credentials { identity: Some(id), groups, ..Credentials::default() };
            let got = set.resolve(&creds);
            prop_assert!(got == set.default || set.policies.values().any(|p| *p == got));
        }

        #[test]
        #[cfg(feature = "toml")]
        fn toml_round_trip(set in set()) {
            let text = toml::to_string(&set).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = PolicySet::from_toml(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, set);
        }

        #[test]
        fn nothing_is_reachable_when_every_allow_flag_is_off(n in "[_a-z]{1,12}") {
            let p = AccessPolicy {
                allow_safe_attrs: false,
                allow_exposed_attrs: false,
                allow_public_attrs: false,
                allow_all_attrs: false,
                ..AccessPolicy::default()
            };
            prop_assert_eq!(p.resolve(&n, Access::Get, |_| Some(Visibility::Plain)), None);
        }
    }
}
