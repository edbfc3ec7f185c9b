//! What an identity may do through the gateway, as capabilities: which
//! handlers, which members of the root, which members of which classes of
//! objects, whether it may pass its own objects, and limits — as data,
//! loadable from TOML.
//!
//! Python's object model offers unbounded ways to reach a name (`__class__`,
//! a traceback's frame, `str.format`, an exception class's module …), so a
//! list of forbidden names always misses one. The gateway therefore grants:
//! a request is forwarded only if its handler is granted, its target is an
//! object the identity was handed under a grant that still holds
//! (`relay`/`capability` keep that table), and the member it names is
//! granted for that object. Nothing here does I/O; [`GatewayPolicy`]'s
//! `check_*` methods are the whole decision about names.

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

/// The handlers every identity may use on the objects it was granted
/// (below). A Python client needs each of them for ordinary use: GETROOT,
/// PING and CLOSE for the connection, DEL to release references, INSPECT to
/// build the proxy class of any object it receives, GETATTR/CALLATTR/CALL
/// for granted members, REPR/STR to print, and CMP for the six comparisons.
pub const BASE_HANDLERS: &[Handler] = &[
    Handler::Ping,
    Handler::Close,
    Handler::GetRoot,
    Handler::GetAttr,
    Handler::Call,
    Handler::CallAttr,
    Handler::Repr,
    Handler::Str,
    Handler::Cmp,
    Handler::Inspect,
    Handler::Del,
];

/// Public attribute names that lead from an object to frames, code,
/// globals or builtins (of tracebacks, frames, generators, coroutines,
/// functions, and `type.mro`). Refused for every identity without
/// `classic`, whatever its policy grants. Dunders need no list: only those
/// [`grantable_dunder`] names can be granted at all (`__class__`,
/// `__globals__`, `__dict__`, `__subclasses__` … never).
pub const INTROSPECTION_NAMES: &[&str] = &[
    "mro",
    "tb_frame",
    "tb_next",
    "f_globals",
    "f_locals",
    "f_builtins",
    "f_back",
    "f_code",
    "gi_frame",
    "gi_code",
    "cr_frame",
    "cr_code",
    "ag_frame",
    "ag_code",
    "func_globals",
    "func_code",
    "im_func",
    "im_self",
];

/// The only dunders a policy can grant: RPyC's `safe_attrs` (operators,
/// containers, iteration, context managers, conversions) without `__new__`,
/// plus `__call__` and `__reversed__`. Every other `__x__` name — the ways to
/// an object's state, class, code and construction (`__getstate__`,
/// `__setattr__`, `__init__`, `__get__`, `__defaults__` …) — is refused
/// whatever a policy lists: a grant cannot name what this list does not.
pub fn grantable_dunder(name: &str) -> bool {
    match name {
        "__call__" | "__reversed__" => true,
        "__new__" => false,
        _ => SAFE_ATTRS.contains(&name),
    }
}

fn is_dunder(name: &str) -> bool {
    name.len() > 4 && name.starts_with("__") && name.ends_with("__")
}

/// The six comparison operators a CMP request may name.
pub const COMPARISONS: &[&str] = &["__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"];

/// The key of [`GatewayPolicy::objects`] whose members are granted on every
/// object.
pub const ANY_CLASS: &str = "any";

/// The gateway's rules for one identity (or group, or everyone): what it
/// may reach on the upstream, as capabilities.
///
/// Nothing is forwarded unless granted. The upstream's root object is
/// granted; its public members (no `_`-names, not the classic roots, not
/// the service hooks; only `root_allow` if that is set) may be read and
/// called. Every object the upstream hands back is usable only through the
/// members `objects` grants for its class, and only while the grant it was
/// obtained under still holds. `classic = true` is full trust: everything
/// is forwarded (on a classic server that is remote code execution, by
/// design).
///
/// ```toml
/// root_allow = ["add", "get_report"]     # only these root members
/// allow_handlers = ["HASH"]              # in addition to BASE_HANDLERS
/// callbacks = true                       # may pass its own functions
/// max_in_flight = 1024
/// rate_per_sec = 0                       # 0 = unlimited
///
/// [objects]                              # members granted per class
/// Report = ["title", "pages", "__len__"] # by id-pack class name ("mod.Report" or "Report")
/// any = ["__iter__"]                     # on every object
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GatewayPolicy {
    /// Handlers that may be forwarded (always on granted objects only).
    /// Default: [`BASE_HANDLERS`]. Add `HASH`, `DIR`, `INSTANCECHECK`,
    /// `BUFFITER`, `OLDSLICING`, `CTXEXIT`, `PICKLE`, `SETATTR` or
    /// `DELATTR` here to grant them; `["*"]` is every handler.
    pub allow_handlers: HandlerSet,
    /// Handlers never forwarded, even if in `allow_handlers`. Default: none.
    pub deny_handlers: HandlerSet,
    /// Names refused on every object. Default: none.
    pub deny_names: BTreeSet<String>,
    /// If not empty, the only root members reachable, written with or
    /// without the `exposed_` prefix (a `_`-name is reachable only if listed
    /// here). Default: empty — every public root member.
    pub root_allow: BTreeSet<String>,
    /// Root members never reachable. Default: `on_connect`, `on_disconnect`
    /// (service lifecycle hooks, which a classic server exposes).
    pub root_deny: BTreeSet<String>,
    /// Members granted on objects other than the root, by the class name of
    /// their id-pack (`"module.Class"`, or just `"Class"`); the key `any`
    /// grants on every object. A member may be read (GETATTR), called
    /// (CALLATTR), and what was read may be called. `"*"` grants every
    /// public (non-`_`) member; `"__call__"` lets the object itself be
    /// called. [`INTROSPECTION_NAMES`] are never granted. Default: none —
    /// objects returned by allowed methods can be passed back as arguments,
    /// printed, compared and released, nothing more.
    pub objects: BTreeMap<String, BTreeSet<String>>,
    /// Lets the identity pass its own objects to the upstream (callbacks,
    /// proxies of client objects) and answer the upstream's requests with
    /// them. Replies to the upstream are sanitized even then: exceptions
    /// are re-raised as the builtin class of the same name (or
    /// `Exception`), never a custom module. Default: false.
    pub callbacks: bool,
    /// Full trust: every handler, name and object, including the classic
    /// roots (`eval`, `execute`, `getmodule`, `namespace`, `getconn`) — on a
    /// classic server that is remote code execution by design. References
    /// obtained under it stop working if it is revoked. Default: false.
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
            allow_handlers: HandlerSet::of(BASE_HANDLERS),
            deny_handlers: HandlerSet::NONE,
            deny_names: BTreeSet::new(),
            root_allow: BTreeSet::new(),
            root_deny: SERVICE_HOOKS.iter().map(|s| s.to_string()).collect(),
            objects: BTreeMap::new(),
            callbacks: false,
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
    /// The handler is not granted: `PermissionError`.
    Handler(Handler),
    /// An attribute name is not granted: `AttributeError("cannot access 'x'")`.
    Name {
        /// The name as the client sent it.
        name: String,
        /// Which rule refused it (for the audit log, never sent).
        rule: &'static str,
    },
    /// The request acts on, or passes, an object the identity holds no
    /// (longer any) grant for: `PermissionError`.
    Object(String),
    /// The identity may not pass its own objects (`callbacks = false`):
    /// `PermissionError`.
    Callbacks(String),
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
            Denial::Object(_) => "object",
            Denial::Callbacks(_) => "callbacks",
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
            Denial::Object(why) => Exception::new("PermissionError", format!("the gateway refused: {why}")),
            Denial::Callbacks(why) => Exception::new(
                "PermissionError",
                format!("the gateway refused: {why} (this identity's policy has callbacks = false)"),
            ),
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
    /// Full trust: every handler, name and object, classic roots included.
    /// For trusted administrators of a classic server only.
    pub fn trusted() -> GatewayPolicy {
        GatewayPolicy {
            allow_handlers: HandlerSet::ALL,
            root_deny: BTreeSet::new(),
            callbacks: true,
            classic: true,
            ..GatewayPolicy::default()
        }
    }

    /// The handlers actually forwarded (`allow_handlers` − `deny_handlers`;
    /// all of them under `classic`).
    pub fn handlers(&self) -> HandlerSet {
        if self.classic {
            return HandlerSet::ALL;
        }
        self.allow_handlers.minus(self.deny_handlers)
    }

    /// True if requests with this handler may be forwarded.
    pub fn handler_allowed(&self, h: Handler) -> bool {
        self.handlers().contains(h)
    }

    fn refused_everywhere(&self, name: &str) -> Option<&'static str> {
        if self.deny_names.contains(name) || self.deny_names.contains(canonical(name)) {
            return Some("deny_names");
        }
        if INTROSPECTION_NAMES.contains(&name) || (is_dunder(name) && !grantable_dunder(name)) {
            return Some("introspection");
        }
        None
    }

    /// Decides whether member `name` of the upstream's root may be reached
    /// (read, called).
    pub fn check_root_member(&self, name: &str) -> Result<(), Denial> {
        let deny = |rule| Err(Denial::Name { name: name.to_string(), rule });
        if self.classic {
            return Ok(());
        }
        if let Some(rule) = self.refused_everywhere(name) {
            return deny(rule);
        }
        let bare = canonical(name);
        let listed = |set: &BTreeSet<String>| set.contains(name) || set.iter().any(|n| canonical(n) == bare);
        if listed(&self.root_deny) {
            return deny("root_deny");
        }
        if CLASSIC_ROOTS.contains(&bare) {
            return deny("classic");
        }
        if self.root_allow.is_empty() {
            if name.starts_with('_') {
                return deny("member");
            }
            return Ok(());
        }
        if !listed(&self.root_allow) {
            return deny("root_allow");
        }
        Ok(())
    }

    /// Decides whether member `name` of an object of class `class` (its
    /// id-pack name) may be reached (read, called).
    pub fn check_member(&self, class: &str, name: &str) -> Result<(), Denial> {
        if self.classic {
            return Ok(());
        }
        if let Some(rule) = self.refused_everywhere(name) {
            return Err(Denial::Name { name: name.to_string(), rule });
        }
        if self.member_granted(class, name) {
            Ok(())
        } else {
            Err(Denial::Name { name: name.to_string(), rule: "member" })
        }
    }

    fn member_granted(&self, class: &str, name: &str) -> bool {
        let short = class.rsplit('.').next().unwrap_or(class);
        let keys = [class, short, ANY_CLASS];
        keys.iter()
            .filter_map(|k| self.objects.get(*k))
            .any(|members| members.contains(name) || (members.contains("*") && !name.starts_with('_') && name != "*"))
    }

    /// True if an object of class `class` may itself be called (its class
    /// is granted `__call__`).
    pub fn callable_class(&self, class: &str) -> bool {
        self.classic || self.member_granted(class, "__call__")
    }
}

/// One line saying what a policy grants (for `rpyc gateway --check`).
pub(crate) fn describe(p: &GatewayPolicy) -> String {
    if p.classic {
        return "classic = true: full trust (code execution on a classic upstream)".into();
    }
    let list = |v: &BTreeSet<String>| v.iter().cloned().collect::<Vec<_>>().join(", ");
    let mut parts = Vec::new();
    parts.push(if p.root_allow.is_empty() {
        "root: every public member".to_string()
    } else {
        format!("root: {}", list(&p.root_allow))
    });
    if !p.root_deny.is_empty() {
        parts.push(format!("root_deny: {}", list(&p.root_deny)));
    }
    for (class, members) in &p.objects {
        parts.push(format!("{class}: {}", list(members)));
    }
    let handlers = p.allow_handlers.minus(p.deny_handlers).handlers();
    parts.push(format!("handlers: {}", handlers.iter().map(|h| h.name()).collect::<Vec<_>>().join(" ")));
    parts.push(format!("callbacks: {}", if p.callbacks { "yes" } else { "no" }));
    if p.max_in_flight > 0 {
        parts.push(format!("max_in_flight {}", p.max_in_flight));
    }
    if p.rate_per_sec > 0.0 {
        parts.push(format!("rate {}/s", p.rate_per_sec));
    }
    parts.join("; ")
}

/// Fields of earlier versions that denied names instead of granting them;
/// a policy that still sets one is refused with the way forward.
const REMOVED_FIELDS: &[(&str, &str)] = &[
    (
        "deny_private",
        "policies now grant instead of deny: `_`-names are refused unless granted under [objects] \
         (or root_allow for the root); for full trust use classic = true",
    ),
    (
        "safe_attrs",
        "grant the dunders an identity needs per class under [objects] (e.g. list = [\"__len__\", \"__iter__\"])",
    ),
];

fn check_removed_fields(text: &str, origin: &str) -> Result<(), String> {
    match text.parse::<toml::Table>() {
        Ok(table) => check_removed(&table, origin),
        Err(_) => Ok(()), // the full parse reports the syntax error
    }
}

/// Refuses a policy set (as TOML) that uses a field of earlier versions.
pub(crate) fn check_removed(table: &toml::Table, origin: &str) -> Result<(), String> {
    let mut tables: Vec<(String, &toml::Table)> = Vec::new();
    if let Some(toml::Value::Table(t)) = table.get("default") {
        tables.push(("default".into(), t));
    }
    if let Some(toml::Value::Table(ps)) = table.get("policies") {
        for (name, p) in ps {
            if let toml::Value::Table(t) = p {
                tables.push((format!("policies.{name}"), t));
            }
        }
    }
    for (name, t) in tables {
        for (field, how) in REMOVED_FIELDS {
            if t.contains_key(*field) {
                return Err(format!("policy {origin}: [{name}] sets {field}, which no longer exists: {how}"));
            }
        }
    }
    Ok(())
}

/// Gateway policies chosen per identity, like [`crate::policy::PolicySet`]:
/// the identity's own entry, then the first of its groups that has one, then
/// `default`.
///
/// ```toml
/// [default]                   # everyone else: the safe default
///
/// [policies.admin]            # full trust (classic rights)
/// classic = true
///
/// [policies.calc]
/// root_allow = ["add", "get_report"]
/// [policies.calc.objects]
/// Report = ["title", "pages"]
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
        check_removed_fields(text, origin)?;
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
        for h in [
            Handler::Pickle,
            Handler::SetAttr,
            Handler::DelAttr,
            Handler::CtxExit,
            Handler::Dir,
            Handler::Hash,
            Handler::BuffIter,
            Handler::OldSlicing,
            Handler::InstanceCheck,
        ] {
            assert!(!p.handler_allowed(h), "{h:?}");
        }
        assert!(p.check_root_member("add").is_ok());
        assert!(p.check_root_member("exposed_add").is_ok());
        for n in ["eval", "execute", "getmodule", "namespace", "getconn", "exposed_eval", "on_connect", "_conn"] {
            assert!(p.check_root_member(n).is_err(), "{n}");
        }
        assert!(p.check_root_member("__class__").is_err());
        // Nothing on other objects unless granted.
        assert!(p.check_member("builtins.list", "append").is_err());
        assert!(p.check_member("builtins.list", "__len__").is_err());
        assert!(!p.callable_class("builtins.function"));
        assert!(GatewayPolicy::trusted().check_member("x", "__class__").is_ok());
    }

    #[test]
    fn objects_grant_members_by_class() {
        let p = GatewayPolicy {
            objects: [
                ("Report".to_string(), ["title".to_string(), "__len__".to_string(), "tb_frame".to_string()].into()),
                ("builtins.list".to_string(), ["*".to_string()].into()),
                (ANY_CLASS.to_string(), ["__iter__".to_string()].into()),
            ]
            .into(),
            ..GatewayPolicy::default()
        };
        assert!(p.check_member("app.reports.Report", "title").is_ok());
        assert!(p.check_member("Report", "__len__").is_ok());
        assert!(p.check_member("app.reports.Report", "pages").is_err());
        // Introspection names are never granted, even when listed.
        assert_eq!(p.check_member("Report", "tb_frame").err().map(|d| d.reason()), Some("introspection"));
        assert!(p.check_member("builtins.list", "append").is_ok());
        assert!(p.check_member("builtins.list", "_private").is_err());
        assert!(p.check_member("builtins.list", "__class__").is_err());
        assert!(p.check_member("whatever.Thing", "__iter__").is_ok());
        // Dunders outside the grantable set are refused even when listed.
        let listed = GatewayPolicy {
            root_allow: ["__getstate__".to_string(), "__len__".to_string()].into(),
            objects: [(
                ANY_CLASS.to_string(),
                ["__setattr__", "__init__", "__get__", "__call__"].map(String::from).into(),
            )]
            .into(),
            ..GatewayPolicy::default()
        };
        assert_eq!(listed.check_root_member("__getstate__").err().map(|d| d.reason()), Some("introspection"));
        assert!(listed.check_root_member("__len__").is_ok());
        for n in ["__setattr__", "__init__", "__get__"] {
            assert_eq!(listed.check_member("X", n).err().map(|d| d.reason()), Some("introspection"), "{n}");
        }
        assert!(listed.check_member("X", "__call__").is_ok());
        assert!(!p.callable_class("Report"));
    }

    #[test]
    fn root_allow_list_ignores_the_exposed_prefix() {
        let p = GatewayPolicy {
            root_allow: ["add".to_string(), "exposed_get_answer".to_string(), "__len__".to_string()].into(),
            ..GatewayPolicy::default()
        };
        for ok in ["add", "exposed_add", "get_answer", "exposed_get_answer", "__len__"] {
            assert!(p.check_root_member(ok).is_ok(), "{ok}");
        }
        assert_eq!(p.check_root_member("echo").err().map(|d| d.reason()), Some("root_allow"));
    }

    #[test]
    fn toml_policies_resolve() {
        let set = GatewayPolicySet::from_toml(
            r#"
            [default]
            [policies.admin]
            classic = true
            [policies.calc]
            root_allow = ["add"]
            allow_handlers = ["getroot", "HANDLE_GETATTR", "CALL", "callattr", "inspect", "del"]
            [policies.calc.objects]
            Report = ["title"]
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
        assert!(p.check_member("Report", "title").is_ok());
        assert_eq!(set.resolve(Some("carol"), &[]).0, "default");
        let err =
            GatewayPolicySet::from_toml("[default]\nallow_handlers = [\"GETATR\"]\n", "t").err().unwrap_or_default();
        assert!(err.contains("unknown handler \"GETATR\""), "{err}");
        let err = GatewayPolicySet::from_toml("[identities]\nx = \"nope\"\n", "t").err().unwrap_or_default();
        assert!(err.contains("undefined policy \"nope\""), "{err}");
        let err = GatewayPolicySet::from_toml("[policies.a]\ndeny_private = false\n", "t").err().unwrap_or_default();
        assert!(err.contains("deny_private") && err.contains("objects"), "{err}");
        let text = toml::to_string(&set).unwrap_or_default();
        assert_eq!(GatewayPolicySet::from_toml(&text, "round trip").ok(), Some(set));
    }
}
