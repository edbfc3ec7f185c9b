//! What an identity may do through the gateway: handlers, attribute names,
//! root methods, classic mode and limits — as data, loadable from TOML.
//!
//! The rules mirror what `rpyc/core/protocol.py` `_check_attr` decides on
//! the upstream (an attribute *name* is what every access check sees), but
//! they are enforced one hop earlier, by the gateway, for servers whose own
//! configuration cannot be trusted (classic servers allow everything).
//! Nothing here does I/O; [`GatewayPolicy::check_name`] and
//! [`GatewayPolicy::handler_allowed`] are the whole decision.

use crate::policy::SAFE_ATTRS;
use crate::wire::Handler;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The methods and attributes of a classic server's root (`rpyc.SlaveService`)
/// that amount to running arbitrary code on it: evaluate, execute, import,
/// reach the namespace dictionary, or reach the server's connection object.
pub const CLASSIC_ROOTS: &[&str] = &["eval", "execute", "getmodule", "namespace", "getconn"];

/// Lifecycle hooks of `rpyc.Service` that no client should call; a classic
/// server exposes them (it allows every attribute). Denied on the root by
/// default (see [`GatewayPolicy::root_deny`]).
pub const SERVICE_HOOKS: &[&str] = &["on_connect", "on_disconnect"];

/// The prefix Python services use for exposed names (`exposed_add` is
/// reachable as `add`); root rules compare names without it.
const EXPOSED_PREFIX: &str = "exposed_";

/// A set of RPyC request handlers, written in TOML as their Python constant
/// names without `HANDLE_` (`["GETATTR", "CALL"]`, any case) or `["*"]` for
/// all of them.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct HandlerSet(u32);

impl HandlerSet {
    /// Every handler RPyC defines (ids 1–20).
    pub const ALL: HandlerSet = HandlerSet(((1u32 << 21) - 1) & !1);
    /// No handler.
    pub const NONE: HandlerSet = HandlerSet(0);

    /// A set holding `handlers`.
    pub fn of(handlers: &[Handler]) -> HandlerSet {
        HandlerSet(handlers.iter().fold(0, |m, h| m | (1 << h.id())))
    }

    /// True if `h` is in the set.
    pub fn contains(self, h: Handler) -> bool {
        self.0 & (1 << h.id()) != 0
    }

    /// The handlers in `self` but not in `other`.
    pub fn minus(self, other: HandlerSet) -> HandlerSet {
        HandlerSet(self.0 & !other.0)
    }

    /// The handlers in the set, in id order.
    pub fn handlers(self) -> Vec<Handler> {
        (1..=20).filter_map(Handler::from_id).filter(|h| self.contains(*h)).collect()
    }
}

impl std::fmt::Debug for HandlerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers().iter().map(|h| h.name())).finish()
    }
}

/// Parses a handler name as written in a policy (`"getattr"`, `"HANDLE_GETATTR"`).
pub fn handler_by_name(name: &str) -> Option<Handler> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("HANDLE_").unwrap_or(&upper);
    (1..=20).filter_map(Handler::from_id).find(|h| h.name() == bare)
}

impl TryFrom<Vec<String>> for HandlerSet {
    type Error = String;
    fn try_from(names: Vec<String>) -> Result<Self, Self::Error> {
        let mut set = HandlerSet::NONE;
        for n in &names {
            if n.trim() == "*" {
                set = HandlerSet::ALL;
                continue;
            }
            let h = handler_by_name(n).ok_or_else(|| {
                format!(
                    "unknown handler {n:?} (expected one of {} or \"*\")",
                    HandlerSet::ALL.handlers().iter().map(|h| h.name()).collect::<Vec<_>>().join(", ")
                )
            })?;
            set.0 |= 1 << h.id();
        }
        Ok(set)
    }
}

impl From<HandlerSet> for Vec<String> {
    fn from(s: HandlerSet) -> Vec<String> {
        if s == HandlerSet::ALL {
            return vec!["*".into()];
        }
        s.handlers().iter().map(|h| h.name().to_string()).collect()
    }
}

/// The gateway's rules for one identity (or group, or everyone).
///
/// The defaults are the gateway's safe default: every handler except
/// PICKLE, SETATTR and DELATTR; no `_`-prefixed name except RPyC's safe
/// dunders; no classic-mode roots; at most 1024 requests in flight per
/// identity. The upstream's own exposure rules still apply behind it.
///
/// ```toml
/// allow_handlers = ["*"]                 # default
/// deny_handlers = ["PICKLE", "SETATTR", "DELATTR"]
/// deny_private = true
/// root_allow = ["add", "get_answer"]     # only these root methods
/// classic = false
/// max_in_flight = 1024
/// rate_per_sec = 0                       # 0 = unlimited
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GatewayPolicy {
    /// Handlers that may be forwarded. Default: all (`["*"]`).
    pub allow_handlers: HandlerSet,
    /// Handlers that are never forwarded, even if in `allow_handlers`.
    /// Default: PICKLE (arbitrary object serialisation), SETATTR and DELATTR
    /// (changing server state by name).
    pub deny_handlers: HandlerSet,
    /// Refuse attribute names starting with `_`, except those in
    /// `safe_attrs`. Default: true — the `_`-names are how Python objects
    /// lead to their classes, globals and builtins.
    ///
    /// The root rules (`root_allow`, `root_deny`, `classic`) are only as
    /// strong as this: with `_`-names open, a client can reach the root's
    /// class (`root.get_service_name.__self__`) and call its functions with
    /// the root as argument. Turn it off only together with `classic`.
    pub deny_private: bool,
    /// The dunders allowed despite `deny_private`. Default: RPyC's
    /// `safe_attrs` ([`SAFE_ATTRS`]).
    pub safe_attrs: BTreeSet<String>,
    /// Names refused on every object. Default: none.
    pub deny_names: BTreeSet<String>,
    /// If not empty, the only root members reachable (safe dunders aside),
    /// written with or without the `exposed_` prefix. Default: empty (no
    /// extra restriction).
    pub root_allow: BTreeSet<String>,
    /// Root members never reachable. Default: `on_connect`, `on_disconnect`
    /// (service lifecycle hooks, which a classic server exposes).
    pub root_deny: BTreeSet<String>,
    /// Grants the classic-mode roots ([`CLASSIC_ROOTS`]: `eval`, `execute`,
    /// `getmodule`, `namespace`, `getconn`). Default: false — on a classic
    /// server they are remote code execution.
    pub classic: bool,
    /// Most requests one identity may have in flight through the gateway,
    /// over all its connections (0 = unlimited). Default: 1024 (a Python
    /// server handles one connection's requests one at a time; more in
    /// flight only queue up).
    pub max_in_flight: usize,
    /// Requests per second one identity may start, over all its connections
    /// (0 = unlimited). Default: 0.
    pub rate_per_sec: f64,
    /// How many requests may come at once above the rate (token-bucket
    /// size). Default: 0, meaning one second's worth of `rate_per_sec`.
    pub burst: u32,
}

impl Default for GatewayPolicy {
    fn default() -> Self {
        GatewayPolicy {
            allow_handlers: HandlerSet::ALL,
            deny_handlers: HandlerSet::of(&[Handler::Pickle, Handler::SetAttr, Handler::DelAttr]),
            deny_private: true,
            safe_attrs: SAFE_ATTRS.iter().map(|s| s.to_string()).collect(),
            deny_names: BTreeSet::new(),
            root_allow: BTreeSet::new(),
            root_deny: SERVICE_HOOKS.iter().map(|s| s.to_string()).collect(),
            classic: false,
            max_in_flight: 1024,
            rate_per_sec: 0.0,
            burst: 0,
        }
    }
}

/// Why a request was refused (each maps to the exception a Python client
/// would expect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The handler is not allowed: `PermissionError`.
    Handler(Handler),
    /// An attribute name is not allowed: `AttributeError("cannot access 'x'")`.
    Name {
        /// The name as the client sent it.
        name: String,
        /// Which rule refused it (for the audit log, never sent).
        rule: &'static str,
    },
    /// The request is not shaped the way any RPyC peer sends it (the gateway
    /// refuses what it cannot check): `TypeError`.
    Malformed(String),
    /// A per-identity limit is exhausted: `RuntimeError`.
    Limit(String),
    /// The gateway is shutting down: `EOFError`.
    Draining,
}

impl Denial {
    /// A short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::Handler(_) => "handler",
            Denial::Name { rule, .. } => rule,
            Denial::Malformed(_) => "malformed",
            Denial::Limit(_) => "limit",
            Denial::Draining => "draining",
        }
    }

    /// The exception sent to the client.
    pub fn exception(&self) -> crate::wire::Exception {
        use crate::wire::{Exception, Value};
        match self {
            Denial::Handler(h) => Exception::new(
                "PermissionError",
                format!("the gateway does not allow {} requests for this identity", h.name()),
            ),
            // Python's own message, so clients see the same text whether the
            // gateway or the server refused.
            Denial::Name { name, .. } => {
                Exception::attribute_error(format!("cannot access {}", Value::Str(name.clone()).repr()))
            }
            Denial::Malformed(why) => Exception::type_error(format!("the gateway refused a malformed request: {why}")),
            Denial::Limit(why) => Exception::runtime_error(format!("the gateway refused the request: {why}")),
            Denial::Draining => Exception::new("EOFError", "the gateway is shutting down"),
        }
    }
}

fn canonical(name: &str) -> &str {
    name.strip_prefix(EXPOSED_PREFIX).unwrap_or(name)
}

impl GatewayPolicy {
    /// Everything allowed: all handlers, all names, classic roots. For
    /// trusted administrators of a classic server only.
    pub fn trusted() -> GatewayPolicy {
        GatewayPolicy {
            deny_handlers: HandlerSet::NONE,
            deny_private: false,
            root_deny: BTreeSet::new(),
            classic: true,
            ..GatewayPolicy::default()
        }
    }

    /// The handlers actually forwarded (`allow_handlers` − `deny_handlers`).
    pub fn handlers(&self) -> HandlerSet {
        self.allow_handlers.minus(self.deny_handlers)
    }

    /// True if `deny_private` is off for an identity without classic rights:
    /// it can get around the root rules (see [`GatewayPolicy::deny_private`]).
    /// With `classic` granted there is nothing left to get around.
    pub fn root_rules_bypassable(&self) -> bool {
        !self.deny_private && !self.classic
    }

    /// True if requests with this handler may be forwarded.
    pub fn handler_allowed(&self, h: Handler) -> bool {
        self.handlers().contains(h)
    }

    /// Decides whether attribute `name` may be reached on an object (`on_root`:
    /// the upstream's root object, where root and classic rules also apply).
    pub fn check_name(&self, name: &str, on_root: bool) -> Result<(), Denial> {
        let deny = |rule| Err(Denial::Name { name: name.to_string(), rule });
        let bare = canonical(name);
        if self.deny_names.contains(name) || self.deny_names.contains(bare) {
            return deny("deny_names");
        }
        let safe = self.safe_attrs.contains(name);
        if self.deny_private && name.starts_with('_') && !safe {
            return deny("private");
        }
        if !on_root {
            return Ok(());
        }
        let listed = |set: &BTreeSet<String>| set.contains(name) || set.iter().any(|n| canonical(n) == bare);
        if listed(&self.root_deny) {
            return deny("root_deny");
        }
        if !self.classic && CLASSIC_ROOTS.contains(&bare) {
            return deny("classic");
        }
        if !self.root_allow.is_empty() && !safe && !listed(&self.root_allow) {
            return deny("root_allow");
        }
        Ok(())
    }
}

/// Gateway policies chosen per identity, like [`crate::policy::PolicySet`]:
/// the identity's own entry, then the first of its groups that has one, then
/// `default`.
///
/// ```toml
/// [default]                   # everyone else: the safe default
///
/// [policies.admin]            # classic rights, nothing filtered
/// classic = true
/// deny_private = false
/// deny_handlers = []
///
/// [policies.calc]
/// root_allow = ["add", "get_answer"]
///
/// [identities]
/// alice = "admin"
/// bob = "calc"
///
/// [groups]
/// ops = "admin"
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GatewayPolicySet {
    /// The policy for identities that match nothing else. Default: the
    /// safe default ([`GatewayPolicy::default`]).
    pub default: GatewayPolicy,
    /// Named policies.
    pub policies: BTreeMap<String, GatewayPolicy>,
    /// Identity → policy name.
    pub identities: BTreeMap<String, String>,
    /// Group → policy name.
    pub groups: BTreeMap<String, String>,
}

impl GatewayPolicySet {
    /// Everyone gets `policy`.
    pub fn uniform(policy: GatewayPolicy) -> GatewayPolicySet {
        GatewayPolicySet { default: policy, ..GatewayPolicySet::default() }
    }

    /// Parses TOML (see the type docs); `origin` names the text in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<GatewayPolicySet, String> {
        let set: GatewayPolicySet = toml::from_str(text).map_err(|e| format!("invalid policy {origin}: {e}"))?;
        set.validate(origin)?;
        Ok(set)
    }

    /// Loads a TOML policy file.
    pub fn load(path: &std::path::Path) -> Result<GatewayPolicySet, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read policy file {}: {e}", path.display()))?;
        Self::from_toml(&text, &format!("file {}", path.display()))
    }

    /// Checks that every identity and group names a defined policy.
    pub fn validate(&self, origin: &str) -> Result<(), String> {
        for (what, map) in [("identity", &self.identities), ("group", &self.groups)] {
            for (key, name) in map {
                if !self.policies.contains_key(name) {
                    return Err(format!(
                        "policy {origin}: {what} {key:?} refers to undefined policy {name:?} \
                         (define it under [policies.{name}])"
                    ));
                }
            }
        }
        for (name, p) in std::iter::once((&"default".to_string(), &self.default)).chain(&self.policies) {
            if !(p.rate_per_sec.is_finite() && p.rate_per_sec >= 0.0) {
                return Err(format!("policy {origin}: {name}.rate_per_sec must be a number >= 0"));
            }
        }
        Ok(())
    }

    /// The policy name and policy for an identity and its groups
    /// (`"default"` when nothing matched).
    pub fn resolve(&self, identity: Option<&str>, groups: &[String]) -> (&str, &GatewayPolicy) {
        let by_id = identity.and_then(|id| self.identities.get(id));
        let name = by_id.or_else(|| groups.iter().find_map(|g| self.groups.get(g)));
        match name.and_then(|n| self.policies.get_key_value(n)) {
            Some((n, p)) => (n.as_str(), p),
            None => ("default", &self.default),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_default() {
        let p = GatewayPolicy::default();
        assert!(p.handler_allowed(Handler::GetAttr) && p.handler_allowed(Handler::Call));
        for h in [Handler::Pickle, Handler::SetAttr, Handler::DelAttr] {
            assert!(!p.handler_allowed(h), "{h:?}");
        }
        assert!(p.check_name("add", true).is_ok());
        assert!(p.check_name("__len__", false).is_ok());
        assert!(p.check_name("__class__", false).is_err());
        assert!(p.check_name("_conn", true).is_err());
        for n in ["eval", "execute", "getmodule", "namespace", "getconn", "exposed_eval", "on_connect"] {
            assert!(p.check_name(n, true).is_err(), "{n}");
        }
        // Classic rules are about the root only.
        assert!(p.check_name("eval", false).is_ok());
        let classic = GatewayPolicy { classic: true, ..GatewayPolicy::default() };
        assert!(classic.check_name("eval", true).is_ok());
        assert!(GatewayPolicy::trusted().check_name("__class__", true).is_ok());
    }

    #[test]
    fn root_allow_list_ignores_the_exposed_prefix() {
        let p = GatewayPolicy {
            root_allow: ["add".to_string(), "exposed_get_answer".to_string()].into(),
            ..GatewayPolicy::default()
        };
        for ok in ["add", "exposed_add", "get_answer", "exposed_get_answer", "__eq__"] {
            assert!(p.check_name(ok, true).is_ok(), "{ok}");
        }
        assert_eq!(p.check_name("echo", true).err().map(|d| d.reason()), Some("root_allow"));
        assert!(p.check_name("echo", false).is_ok());
    }

    #[test]
    fn toml_policies_resolve() {
        let set = GatewayPolicySet::from_toml(
            r#"
            [default]
            [policies.admin]
            classic = true
            deny_handlers = []
            [policies.calc]
            root_allow = ["add"]
            allow_handlers = ["getroot", "HANDLE_GETATTR", "CALL", "callattr", "inspect", "del"]
            [identities]
            alice = "admin"
            [groups]
            calc = "calc"
            "#,
            "test",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (name, p) = set.resolve(Some("alice"), &[]);
        assert!(name == "admin" && p.classic && p.handler_allowed(Handler::Pickle));
        let (name, p) = set.resolve(Some("bob"), &["calc".to_string()]);
        assert!(name == "calc" && !p.handler_allowed(Handler::Dir) && p.handler_allowed(Handler::GetAttr));
        assert_eq!(set.resolve(Some("carol"), &[]).0, "default");
        let err =
            GatewayPolicySet::from_toml("[default]\nallow_handlers = [\"GETATR\"]\n", "t").err().unwrap_or_default();
        assert!(err.contains("unknown handler \"GETATR\""), "{err}");
        let err = GatewayPolicySet::from_toml("[identities]\nx = \"nope\"\n", "t").err().unwrap_or_default();
        assert!(err.contains("undefined policy \"nope\""), "{err}");
        let text = toml::to_string(&set).unwrap_or_default();
        assert_eq!(GatewayPolicySet::from_toml(&text, "round trip").ok(), Some(set));
    }
}
