//! berth's nftables table: masquerading, published ports (DNAT) and isolation between networks.
//!
//! The whole table is computed from the service's state and replaced in one `nft -j`
//! transaction (`add table; delete table; add table; chains; rules`), so the kernel never holds
//! a half-written ruleset and a restart simply rewrites it. When no network needs rules the table
//! is deleted. berth touches no other table.
//!
//! Table `ip <name>`:
//! - `prerouting` and `output` (nat): traffic to a local address (`fib daddr type local`,
//!   which includes 127.0.0.1 and the host's own addresses) jumps to `ports`.
//! - `ports`: one DNAT rule per published port.
//! - `postrouting` (nat): masquerade what leaves a non-internal network; masquerade loopback
//!   sources DNATed into a bridge (with `route_localnet` on the bridge, this makes published
//!   ports answer on 127.0.0.1); masquerade DNATed traffic between containers of one bridge.
//! - `forward` (filter): into a bridge only replies and DNATed connections, nothing routed
//!   between networks; internal networks forward nothing at all.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{
    CT, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{JumpTarget, Match, NAT, Operator, Statement};
use nftables::types::NfFamily;
use nftables::types::{NfChainPolicy, NfChainType, NfHook};

use crate::error::{Error, Result};
use crate::model::Protocol;

/// The rules of one bridge network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeRules {
    /// Bridge interface.
    pub bridge: String,
    /// Subnet.
    pub subnet: Ipv4Net,
    /// Internal: nothing in or out.
    pub internal: bool,
}

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dnat {
    /// Host address; `0.0.0.0` = every local address.
    pub host_ip: Ipv4Addr,
    /// Host port.
    pub host_port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Container address.
    pub ip: Ipv4Addr,
    /// Container port.
    pub port: u16,
}

/// Everything the table must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Networks with a bridge on the host.
    pub networks: Vec<BridgeRules>,
    /// Published ports.
    pub dnats: Vec<Dnat>,
}

/// The nftables table berth owns.
#[derive(Debug, Clone)]
pub struct Firewall {
    table: String,
}

impl Firewall {
    /// The table named `table` (family ip).
    pub fn new(table: &str) -> Firewall {
        Firewall {
            table: table.to_owned(),
        }
    }

    /// Replaces the table's contents with `rules` (deletes the table when there are none).
    /// Blocking: runs `nft`.
    pub fn apply(&self, rules: &Ruleset) -> Result<()> {
        let batch = self.batch(rules);
        nftables::helper::apply_ruleset(&batch).map_err(|source| Error::Firewall {
            table: self.table.clone(),
            source,
        })
    }

    /// The nft transaction for `rules`.
    pub fn batch(&self, rules: &Ruleset) -> Nftables<'static> {
        let mut b = Batch::new();
        let table = Table {
            family: NfFamily::IP,
            name: self.table.clone().into(),
            handle: None,
        };
        // `add` first so that `delete` cannot fail on a missing table.
        b.add(NfListObject::Table(table.clone()));
        b.delete(NfListObject::Table(table.clone()));
        if rules.networks.is_empty() && rules.dnats.is_empty() {
            return b.to_nftables();
        }
        b.add(NfListObject::Table(table));
        let t = self.table.clone();
        let chain = |name: &str, hook: Option<(NfChainType, NfHook, i32)>| {
            NfListObject::Chain(Chain {
                family: NfFamily::IP,
                table: t.clone().into(),
                name: name.to_owned().into(),
                newname: None,
                handle: None,
                _type: hook.map(|h| h.0),
                hook: hook.map(|h| h.1),
                prio: hook.map(|h| h.2),
                dev: None,
                policy: hook.map(|_| NfChainPolicy::Accept),
            })
        };
        b.add(chain(
            "prerouting",
            Some((NfChainType::NAT, NfHook::Prerouting, -100)),
        ));
        b.add(chain(
            "output",
            Some((NfChainType::NAT, NfHook::Output, -100)),
        ));
        b.add(chain(
            "postrouting",
            Some((NfChainType::NAT, NfHook::Postrouting, 100)),
        ));
        b.add(chain(
            "forward",
            Some((NfChainType::Filter, NfHook::Forward, 0)),
        ));
        b.add(chain("ports", None));
        let rule = |chain: &str, expr: Vec<Statement<'static>>| {
            NfListObject::Rule(Rule {
                family: NfFamily::IP,
                table: t.clone().into(),
                chain: chain.to_owned().into(),
                expr: Cow::Owned(expr),
                handle: None,
                index: None,
                comment: None,
            })
        };
        let to_ports = || {
            vec![
                m(fib_daddr_type(), Operator::EQ, s("local")),
                Statement::Jump(JumpTarget {
                    target: "ports".into(),
                }),
            ]
        };
        b.add(rule("prerouting", to_ports()));
        b.add(rule("output", to_ports()));
        for d in &rules.dnats {
            let mut expr = Vec::new();
            if !d.host_ip.is_unspecified() {
                expr.push(m(
                    payload("ip", "daddr"),
                    Operator::EQ,
                    s(d.host_ip.to_string()),
                ));
            }
            let proto = d.protocol.to_string();
            expr.push(m(
                payload(&proto, "dport"),
                Operator::EQ,
                Expression::Number(d.host_port.into()),
            ));
            expr.push(Statement::DNAT(Some(NAT {
                addr: Some(s(d.ip.to_string())),
                family: None,
                port: Some(Expression::Number(d.port.into())),
                flags: None,
            })));
            b.add(rule("ports", expr));
        }
        for n in &rules.networks {
            let br = || s(n.bridge.clone());
            // Published ports on 127.0.0.1: loopback sources leave through the bridge as the
            // gateway (needs route_localnet on the bridge).
            b.add(rule(
                "postrouting",
                vec![
                    m(meta(MetaKey::Oifname), Operator::EQ, br()),
                    m(
                        payload("ip", "saddr"),
                        Operator::EQ,
                        prefix(Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8)),
                    ),
                    Statement::Masquerade(None),
                ],
            ));
            if n.internal {
                b.add(rule(
                    "forward",
                    vec![
                        m(meta(MetaKey::Iifname), Operator::EQ, br()),
                        Statement::Drop(None),
                    ],
                ));
                b.add(rule(
                    "forward",
                    vec![
                        m(meta(MetaKey::Oifname), Operator::EQ, br()),
                        Statement::Drop(None),
                    ],
                ));
                continue;
            }
            // Hairpin: a container reaching a published port of its own bridge.
            b.add(rule(
                "postrouting",
                vec![
                    m(meta(MetaKey::Oifname), Operator::EQ, br()),
                    m(payload("ip", "saddr"), Operator::EQ, prefix(n.subnet)),
                    m(ct("status"), Operator::IN, s("dnat")),
                    Statement::Masquerade(None),
                ],
            ));
            b.add(rule(
                "postrouting",
                vec![
                    m(payload("ip", "saddr"), Operator::EQ, prefix(n.subnet)),
                    m(meta(MetaKey::Oifname), Operator::NEQ, br()),
                    Statement::Masquerade(None),
                ],
            ));
            b.add(rule(
                "forward",
                vec![
                    m(meta(MetaKey::Oifname), Operator::EQ, br()),
                    m(
                        ct("state"),
                        Operator::IN,
                        Expression::List(vec![s("established"), s("related")]),
                    ),
                    Statement::Accept(None),
                ],
            ));
            b.add(rule(
                "forward",
                vec![
                    m(meta(MetaKey::Oifname), Operator::EQ, br()),
                    m(ct("status"), Operator::IN, s("dnat")),
                    Statement::Accept(None),
                ],
            ));
            b.add(rule(
                "forward",
                vec![
                    m(meta(MetaKey::Oifname), Operator::EQ, br()),
                    m(meta(MetaKey::Iifname), Operator::NEQ, br()),
                    Statement::Drop(None),
                ],
            ));
        }
        b.to_nftables()
    }
}

fn s(text: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(text.into()))
}

fn m(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.to_owned().into(),
            field: field.to_owned().into(),
        },
    )))
}

fn prefix(net: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(net.network().to_string())),
        len: u32::from(net.prefix_len()),
    }))
}

fn fib_daddr_type() -> Expression<'static> {
    Expression::Named(NamedExpression::Fib(Fib {
        result: FibResult::Type,
        flags: HashSet::from([FibFlag::Daddr]),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_ruleset_only_deletes_the_table() {
        let json = serde_json::to_value(Firewall::new("t").batch(&Ruleset::default())).unwrap();
        let cmds = json["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 2, "{json}");
        assert!(cmds[1].get("delete").is_some(), "{json}");
    }

    #[test]
    fn rules_mention_bridges_and_ports() {
        let rules = Ruleset {
            networks: vec![
                BridgeRules {
                    bridge: "berth-a".into(),
                    subnet: "10.7.0.0/24".parse().unwrap(),
                    internal: false,
                },
                BridgeRules {
                    bridge: "berth-b".into(),
                    subnet: "10.8.0.0/24".parse().unwrap(),
                    internal: true,
                },
            ],
            dnats: vec![Dnat {
                host_ip: Ipv4Addr::UNSPECIFIED,
                host_port: 8080,
                protocol: Protocol::Tcp,
                ip: "10.7.0.2".parse().unwrap(),
                port: 80,
            }],
        };
        let text = serde_json::to_string(&Firewall::new("t").batch(&rules)).unwrap();
        for needle in [
            "berth-a",
            "berth-b",
            "10.7.0.2",
            "8080",
            "masquerade",
            "\"dnat\"",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
    }
}
