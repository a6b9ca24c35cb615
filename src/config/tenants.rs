//! `[tenants.<name>]`: who shares the deployment, with what weight, up to which priority,
//! and (`tokens_env`) which variable holds their API tokens. The `default` tenant always
//! exists: weight 1 and any priority unless configured.

use std::collections::BTreeMap;

use batchyard_jobs::batch::DEFAULT_TENANT;
use batchyard_jobs::priority::Priority;
use serde::Deserialize;

type Bad = (String, String);

/// The largest weight: shares are computed in integers, so keep them comparable.
pub const MAX_WEIGHT: u64 = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub weight: Option<i64>,
    /// `high`, `normal`, `low` or a number.
    pub max_priority: Option<toml::Value>,
    /// The environment variable holding this tenant's API tokens, comma-separated.
    pub tokens_env: Option<String>,
    /// The most one batch of this tenant may spend, USD.
    pub max_budget_usd: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub name: String,
    /// Its share of the workers against other tenants with work.
    pub weight: u32,
    /// The highest priority its batches run at; a higher one asked for is capped to it.
    pub max_priority: Priority,
    /// The variable holding its API tokens (the name only; read where tokens are wired).
    pub tokens_env: Option<String>,
    /// The most one batch may spend: a batch without a budget gets this one, a larger one is
    /// lowered to it.
    pub max_budget_usd: Option<f64>,
}

/// Every tenant, by name; `default` included.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenants {
    by_name: BTreeMap<String, Tenant>,
}

impl Default for Tenants {
    fn default() -> Self {
        Self {
            by_name: BTreeMap::from([(DEFAULT_TENANT.to_string(), default_tenant())]),
        }
    }
}

fn default_tenant() -> Tenant {
    Tenant {
        name: DEFAULT_TENANT.to_string(),
        weight: 1,
        max_priority: Priority::HIGHEST,
        tokens_env: None,
        max_budget_usd: None,
    }
}

/// What a batch runs as: its tenant's name and weight, the priority it gets and its budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub tenant: String,
    pub weight: u32,
    pub priority: Priority,
    /// The priority asked for, when it was above the tenant's allowance and was lowered.
    pub capped_from: Option<Priority>,
    /// The batch's budget: the one asked for, or the tenant's `max_budget_usd` when none was
    /// asked for or a larger one was.
    pub budget_usd: Option<f64>,
    /// The budget asked for when the tenant's cap replaced it (`Some(None)`: none was asked).
    pub budget_from: Option<Option<f64>>,
}

impl Placement {
    /// The lines a CLI prints to stderr when the priority or the budget was lowered.
    pub fn cap_notice(&self) -> Option<String> {
        let mut notes = Vec::new();
        if let Some(asked) = self.capped_from {
            notes.push(format!(
                "priority {asked} is above tenant {:?}'s max_priority; the batch runs at {}",
                self.tenant, self.priority
            ));
        }
        if let (Some(asked), Some(cap)) = (self.budget_from, self.budget_usd) {
            notes.push(match asked {
                Some(asked) => format!(
                    "budget ${asked} is above tenant {:?}'s max_budget_usd; the batch may spend ${cap}",
                    self.tenant
                ),
                None => format!(
                    "no budget given: tenant {:?}'s max_budget_usd applies, the batch may spend ${cap}",
                    self.tenant
                ),
            });
        }
        (!notes.is_empty()).then(|| notes.join("\n"))
    }
}

impl Tenants {
    pub fn get(&self, name: &str) -> Option<&Tenant> {
        self.by_name.get(name)
    }

    /// Every tenant, `default` included, by name.
    pub fn all(&self) -> impl Iterator<Item = &Tenant> {
        self.by_name.values()
    }

    /// Where a batch of `tenant` (default: `default`) asking for `priority` (default:
    /// `normal`) and `budget_usd` runs. An unknown tenant is refused; a priority above the
    /// tenant's `max_priority` is capped to it (see [`Placement::capped_from`]), and so is a
    /// budget above its `max_budget_usd` or a missing one.
    pub fn place(
        &self,
        tenant: Option<&str>,
        priority: Option<Priority>,
        budget_usd: Option<f64>,
    ) -> Result<Placement, String> {
        let name = tenant.unwrap_or(DEFAULT_TENANT);
        let Some(t) = self.get(name) else {
            let known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            return Err(format!(
                "unknown tenant {name:?}: name one of [tenants.*] in the config ({})",
                known.join(", ")
            ));
        };
        let asked = priority.unwrap_or(Priority::NORMAL);
        let (priority, capped_from) = if asked > t.max_priority {
            (t.max_priority, Some(asked))
        } else {
            (asked, None)
        };
        let (budget_usd, budget_from) = match (budget_usd, t.max_budget_usd) {
            (Some(asked), Some(cap)) if asked > cap => (Some(cap), Some(Some(asked))),
            (None, Some(cap)) => (Some(cap), Some(None)),
            (asked, _) => (asked, None),
        };
        Ok(Placement {
            tenant: t.name.clone(),
            weight: t.weight,
            priority,
            capped_from,
            budget_usd,
            budget_from,
        })
    }
}

pub(super) fn tenants(raw: &BTreeMap<String, RawTenant>) -> Result<Tenants, Bad> {
    let mut out = Tenants::default();
    for (name, t) in raw {
        let key = |k: &str| format!("tenants.{name}.{k}");
        check_name(name).map_err(|why| (format!("tenants.{name}"), why))?;
        let weight = match t.weight {
            None => 1,
            Some(w) if (1..=MAX_WEIGHT as i64).contains(&w) => w as u32,
            Some(w) => {
                return Err((
                    key("weight"),
                    format!("must be a whole number from 1 to {MAX_WEIGHT}, not {w}"),
                ));
            }
        };
        let max_priority = match &t.max_priority {
            None if name == DEFAULT_TENANT => Priority::HIGHEST,
            None => Priority::NORMAL,
            Some(v) => priority_value(v).map_err(|why| (key("max_priority"), why))?,
        };
        if let Some(var) = &t.tokens_env {
            check_env_name(var).map_err(|why| (key("tokens_env"), why))?;
        }
        if let Some(cap) = t.max_budget_usd
            && !(cap.is_finite() && cap > 0.0)
        {
            return Err((
                key("max_budget_usd"),
                format!("must be a number of USD above 0, not {cap}"),
            ));
        }
        out.by_name.insert(
            name.clone(),
            Tenant {
                name: name.clone(),
                weight,
                max_priority,
                tokens_env: t.tokens_env.clone(),
                max_budget_usd: t.max_budget_usd,
            },
        );
    }
    Ok(out)
}

/// A priority as TOML writes it: `"high"`, `"normal"`, `"low"`, or an integer.
pub fn priority_value(v: &toml::Value) -> Result<Priority, String> {
    match v {
        toml::Value::String(s) => s.parse(),
        toml::Value::Integer(n) => Priority::new(*n),
        other => Err(format!(
            "must be high, normal, low or a number, not a {}",
            other.type_str()
        )),
    }
}

/// A tenant's name ends up in Redis keys and tokens (`tenant:token`): keep it plain.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a tenant name: use 1 to 64 letters, digits, '-' or '_'"
        ))
    }
}

fn check_env_name(var: &str) -> Result<(), String> {
    let ok = !var.is_empty()
        && !var.starts_with(|c: char| c.is_ascii_digit())
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{var:?} is not an environment variable name (letters, digits and '_', not starting with a digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Tenants, Bad> {
        let raw: BTreeMap<String, RawTenant> =
            toml::from_str(text).map_err(|e| ("-".into(), e.to_string()))?;
        tenants(&raw)
    }

    #[test]
    fn defaults_and_caps() {
        let t = parse(
            "[team-a]\nweight = 3\n[ops]\nmax_priority = \"high\"\n[default]\nmax_priority = 5\n",
        )
        .unwrap();
        assert_eq!(
            t.get("team-a").map(|t| (t.weight, t.max_priority)),
            Some((3, Priority::NORMAL))
        );
        let p = t.place(Some("team-a"), Some(Priority::HIGH), None).unwrap();
        assert_eq!(
            (p.priority, p.capped_from),
            (Priority::NORMAL, Some(Priority::HIGH))
        );
        assert!(p.cap_notice().unwrap().contains("team-a"));
        let p = t.place(Some("ops"), Some(Priority::HIGH), None).unwrap();
        assert_eq!((p.priority, p.capped_from), (Priority::HIGH, None));
        assert_eq!(
            t.place(None, Some(Priority::HIGH), None)
                .unwrap()
                .priority
                .value(),
            5
        );
        let unknown = t.place(Some("nobody"), None, None).unwrap_err();
        assert!(
            unknown.contains("\"nobody\"") && unknown.contains("team-a"),
            "{unknown}"
        );
        // Unconfigured, `default` may use any priority.
        let p = Tenants::default()
            .place(None, Some(Priority::HIGH), Some(5.0))
            .unwrap();
        assert_eq!((p.budget_usd, p.budget_from), (Some(5.0), None));
        assert_eq!(
            (p.tenant.as_str(), p.priority, p.weight),
            ("default", Priority::HIGH, 1)
        );
    }

    #[test]
    fn a_tenants_budget_cap_fills_in_and_lowers_budgets() {
        let t = parse("[team-a]\nmax_budget_usd = 50\n").unwrap();
        let p = t.place(Some("team-a"), None, None).unwrap();
        assert_eq!((p.budget_usd, p.budget_from), (Some(50.0), Some(None)));
        assert!(p.cap_notice().unwrap().contains("no budget given"));
        let p = t.place(Some("team-a"), None, Some(80.0)).unwrap();
        assert_eq!(
            (p.budget_usd, p.budget_from),
            (Some(50.0), Some(Some(80.0)))
        );
        let note = p.cap_notice().unwrap();
        assert!(note.contains("$80") && note.contains("$50"), "{note}");
        let p = t.place(Some("team-a"), None, Some(20.0)).unwrap();
        assert_eq!(
            (p.budget_usd, p.budget_from, p.cap_notice()),
            (Some(20.0), None, None)
        );
        // No cap: whatever was asked, none included.
        let p = t.place(None, None, None).unwrap();
        assert_eq!((p.budget_usd, p.cap_notice()), (None, None));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[a]\nweight = 0\n", "tenants.a.weight"),
            ("[a]\nmax_priority = \"urgent\"\n", "tenants.a.max_priority"),
            ("[a]\nmax_priority = 1000\n", "tenants.a.max_priority"),
            ("[a]\nmax_priority = 1.5\n", "tenants.a.max_priority"),
            ("[a]\ntokens_env = \"NOT-A-VAR\"\n", "tenants.a.tokens_env"),
            ("[a]\nmax_budget_usd = 0\n", "tenants.a.max_budget_usd"),
            ("[a]\nmax_budget_usd = -3.5\n", "tenants.a.max_budget_usd"),
            ("[\"a b\"]\nweight = 1\n", "tenants.a b"),
        ] {
            assert_eq!(parse(text).map(|_| ()).unwrap_err().0, key, "{text}");
        }
        assert!(parse("[a]\nshare = 2\n").is_err());
    }

    #[test]
    fn whole_config_names_the_key_of_a_bad_pipeline_tenant_or_window() {
        let load = super::super::tests::load;
        let pipeline = "[tenants.ops]\nweight = 2\n[pipelines.nightly]\nschedule = \"0 2 * * *\"\n\
                        input = \"./in\"\ntask = \"summarize\"\npriority = \"low\"\n";
        let s = load(&format!("{pipeline}tenant = \"ops\"\n")).unwrap();
        let p = &s.pipelines["nightly"];
        assert_eq!(
            (p.tenant.as_deref(), p.priority),
            (Some("ops"), Some(Priority::LOW))
        );
        assert_eq!(s.tenants.get("ops").map(|t| t.weight), Some(2));
        let e = load(&format!("{pipeline}tenant = \"nobody\"\n")).unwrap_err();
        assert_eq!(e.key, "pipelines.nightly.tenant", "{e}");
        let e = load("[queue]\nready_window = 0\n").unwrap_err();
        assert_eq!(e.key, "queue.ready_window", "{e}");
    }
}
