//! Small constructors for nftables JSON. The `nftables` crate's schema has no
//! verdict-map type, so the plan is built as JSON here and applied through
//! the crate's helper.

use serde_json::{json, Value};

/// One address family's names and types.
#[derive(Debug, Clone, Copy)]
pub struct Fam {
    pub suffix: &'static str,
    pub proto: &'static str,
    pub addr_type: &'static str,
}

pub const V4: Fam = Fam {
    suffix: "4",
    proto: "ip",
    addr_type: "ipv4_addr",
};
pub const V6: Fam = Fam {
    suffix: "6",
    proto: "ip6",
    addr_type: "ipv6_addr",
};
pub const FAMS: [Fam; 2] = [V4, V6];

impl Fam {
    pub fn of(ip: &std::net::IpAddr) -> Fam {
        if ip.is_ipv4() {
            V4
        } else {
            V6
        }
    }

    pub fn name(&self, base: &str) -> String {
        format!("{base}{}", self.suffix)
    }

    pub fn is_v4(&self) -> bool {
        self.suffix == "4"
    }

    /// The members of tenant `chain` in this family: the set its accept rule
    /// looks up, and the one every ADD and DEL changes.
    pub fn tenant_set(&self, chain: &str) -> String {
        format!("{chain}-{}", self.suffix)
    }

    pub fn saddr(&self) -> Value {
        payload(self.proto, "saddr")
    }

    pub fn daddr(&self) -> Value {
        payload(self.proto, "daddr")
    }
}

pub fn payload(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}

pub fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

pub fn ct(key: &str) -> Value {
    json!({"ct": {"key": key}})
}

pub fn set_ref(name: &str) -> Value {
    json!(format!("@{name}"))
}

pub fn matches(left: Value, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

pub fn in_set(left: Value, set: &str) -> Value {
    matches(left, "==", set_ref(set))
}

pub fn not_in_set(left: Value, set: &str) -> Value {
    matches(left, "!=", set_ref(set))
}

pub fn concat(items: Vec<Value>) -> Value {
    json!({"concat": items})
}

pub fn verdict(v: &str) -> Value {
    json!({ v: null })
}

pub fn jump(chain: &str) -> Value {
    json!({"jump": {"target": chain}})
}

pub fn counter() -> Value {
    json!({"counter": null})
}

/// Commands of one transaction, all against one table.
/// A set or map element, typed, so an element-only batch can go to the kernel
/// without the `nft` program (see `firewall::nfnl`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Elem {
    Addr(std::net::IpAddr),
    Ifname(String),
    /// `ifname . addr`
    IfAddr(String, std::net::IpAddr),
    /// `iface_index . addr`
    IdxAddr(u32, std::net::IpAddr),
    /// `addr : verdict` in a verdict map.
    AddrMap(std::net::IpAddr, Verdict),
    /// `devgroup : verdict`: a project's interface group to its tenant.
    GroupMap(u32, Verdict),
}

/// What a verdict-map element sends a packet to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Jump(String),
    Goto(String),
    Accept,
}

impl Verdict {
    pub fn to_json(&self) -> Value {
        match self {
            Verdict::Jump(chain) => jump(chain),
            Verdict::Goto(chain) => json!({"goto": {"target": chain}}),
            Verdict::Accept => verdict("accept"),
        }
    }
}

impl Elem {
    pub fn to_json(&self) -> Value {
        match self {
            Elem::Addr(a) => json!(a.to_string()),
            Elem::Ifname(n) => json!(n),
            Elem::IfAddr(n, a) => concat(vec![json!(n), json!(a.to_string())]),
            Elem::IdxAddr(i, a) => concat(vec![json!(i), json!(a.to_string())]),
            Elem::AddrMap(a, v) => json!([a.to_string(), v.to_json()]),
            Elem::GroupMap(k, v) => json!([k, v.to_json()]),
        }
    }
}

/// Elements added to or deleted from one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementOp {
    pub add: bool,
    pub set: String,
    pub elems: Vec<Elem>,
}

pub struct Batch {
    pub table: String,
    pub cmds: Vec<Value>,
    /// The element commands of `cmds`, typed.
    pub elements: Vec<ElementOp>,
    /// The new tenant chains of `cmds` (each with one member set and one
    /// accept rule per family).
    pub tenant_chains: Vec<String>,
    /// Tenant chains accept through the verified chain (the fast path is on).
    pub fast_path: bool,
    /// The epoch rules of `cmds`, replaced: see `policy::epoch`.
    pub epoch: Option<super::epoch::EpochMark>,
    /// Whether `cmds` has anything but elements, new tenant chains and the
    /// epoch: only such batches need the `nft` program.
    pub structural: bool,
}

impl Batch {
    pub fn new(table: &str) -> Self {
        Self {
            table: table.to_string(),
            cmds: Vec::new(),
            elements: Vec::new(),
            tenant_chains: Vec::new(),
            fast_path: false,
            epoch: None,
            structural: false,
        }
    }

    /// How a tenant chain accepts a member: through the verified chain,
    /// which marks the connection, when the fast path is on.
    pub fn member_verdict(&self) -> Verdict {
        if self.fast_path {
            Verdict::Goto(super::epoch::VERIFIED_CHAIN.into())
        } else {
            Verdict::Accept
        }
    }

    /// A tenant chain: in a rebuild, or for a project's first pod on the
    /// node. Its commands are recorded like any other, but on its own it
    /// leaves the batch encodable in-process.
    pub fn new_tenant_chain(&mut self, chain: &str) {
        let structural = self.structural;
        self.add_chain(chain, None);
        for f in FAMS {
            let set = f.tenant_set(chain);
            self.add_set(&set, json!(f.addr_type), &[], vec![]);
            let accept = self.member_verdict().to_json();
            self.add_rule(chain, vec![in_set(f.daddr(), &set), accept]);
        }
        self.structural = structural;
        self.tenant_chains.push(chain.into());
    }

    pub(super) fn push(&mut self, verb: &str, kind: &str, mut body: Value) {
        self.structural |= kind != "element";
        body["family"] = json!("inet");
        if kind == "table" {
            body["name"] = json!(self.table);
        } else {
            body["table"] = json!(self.table);
        }
        self.cmds.push(json!({ verb: { kind: body } }));
    }

    pub fn add_table(&mut self) {
        self.push("add", "table", json!({}));
    }

    pub fn delete_table(&mut self) {
        self.push("delete", "table", json!({}));
    }

    pub fn add_set(&mut self, name: &str, ty: Value, flags: &[&str], elem: Vec<Value>) {
        let mut body = json!({"name": name, "type": ty});
        if !flags.is_empty() {
            body["flags"] = json!(flags);
        }
        if !elem.is_empty() {
            body["elem"] = json!(elem);
        }
        self.push("add", "set", body);
    }

    pub fn add_verdict_map(&mut self, name: &str, key_type: &str, elem: Vec<Value>) {
        let mut body = json!({"name": name, "type": key_type, "map": "verdict"});
        if !elem.is_empty() {
            body["elem"] = json!(elem);
        }
        self.push("add", "map", body);
    }

    /// A base chain when `hook` is given: (type, hook, priority).
    pub fn add_chain(&mut self, name: &str, hook: Option<(&str, &str, i32)>) {
        let mut body = json!({"name": name});
        if let Some((ty, hook, prio)) = hook {
            body["type"] = json!(ty);
            body["hook"] = json!(hook);
            body["prio"] = json!(prio);
            body["policy"] = json!("accept");
        }
        self.push("add", "chain", body);
    }

    pub fn flush_chain(&mut self, name: &str) {
        self.push("flush", "chain", json!({"name": name}));
    }

    pub fn add_rule(&mut self, chain: &str, expr: Vec<Value>) {
        self.push("add", "rule", json!({"chain": chain, "expr": expr}));
    }

    pub fn element(&mut self, add: bool, set: &str, elems: Vec<Elem>) {
        if elems.is_empty() {
            return;
        }
        let json: Vec<Value> = elems.iter().map(Elem::to_json).collect();
        let verb = if add { "add" } else { "delete" };
        self.push(verb, "element", json!({"name": set, "elem": json}));
        self.elements.push(ElementOp {
            add,
            set: set.into(),
            elems,
        });
    }

    pub fn to_json(&self) -> Value {
        json!({"nftables": self.cmds})
    }

    /// Rules in the batch (for the constant-rule-count property).
    pub fn rule_count(&self) -> usize {
        self.cmds
            .iter()
            .filter(|c| c.pointer("/add/rule").is_some())
            .count()
    }
}
