//! Token and cost accounting, deterministic so tests can assert exact numbers.
//!
//! Per model call: `input_tokens = 10 + ceil(prompt_bytes/4)`, `output_tokens =
//! ceil(reply_bytes/4)`, `cost = input*4e-6 + output*20e-6` (claude-opus-5-5 list price), each
//! overridable by a directive. A run's usage is the sum over its calls.

use std::collections::BTreeMap;
use std::ops::AddAssign;

use crate::directives::Directives;
use crate::json::J;
use crate::version::Generation;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_create: u64,
    pub cost: f64,
}

impl AddAssign for Tokens {
    fn add_assign(&mut self, o: Tokens) {
        self.input += o.input;
        self.output += o.output;
        self.cache_read += o.cache_read;
        self.cache_create += o.cache_create;
        self.cost += o.cost;
    }
}

/// The usage of one model call.
pub fn per_call(prompt: &str, reply: &str, d: &Directives) -> Tokens {
    let input = d
        .num("in_tokens")
        .unwrap_or(10 + (prompt.len() as u64).div_ceil(4));
    let output = d
        .num("out_tokens")
        .unwrap_or((reply.len() as u64).div_ceil(4));
    let cost = d
        .num::<f64>("cost")
        .filter(|c| c.is_finite())
        .unwrap_or(input as f64 * 4e-6 + output as f64 * 20e-6);
    Tokens {
        input,
        output,
        cache_read: d.num("cache_read").unwrap_or(0),
        cache_create: d.num("cache_create").unwrap_or(0),
        cost,
    }
}

/// `modelUsage`: totals per model.
pub type ModelUsage = BTreeMap<String, Tokens>;

pub fn add_model(into: &mut ModelUsage, model: &str, t: Tokens) {
    *into.entry(model.to_string()).or_default() += t;
}

pub fn total_cost(m: &ModelUsage) -> f64 {
    m.values().map(|t| t.cost).sum()
}

/// The result's `usage` object (per run in every version).
pub fn usage_json(t: Tokens, generation: Generation) -> J {
    let mut u = obj! {
        "input_tokens" => t.input,
        "cache_creation_input_tokens" => t.cache_create,
        "cache_read_input_tokens" => t.cache_read,
        "output_tokens" => t.output,
    };
    if generation == Generation::Current {
        u.set("output_tokens_details", obj! {"thinking_tokens" => 0});
    }
    let server_tool_use = if generation == Generation::Legacy {
        obj! {"web_search_requests" => 0}
    } else {
        obj! {"web_search_requests" => 0, "web_fetch_requests" => 0}
    };
    u.set("server_tool_use", server_tool_use);
    u.set("service_tier", "standard");
    u.set(
        "cache_creation",
        obj! {"ephemeral_1h_input_tokens" => 0, "ephemeral_5m_input_tokens" => 0},
    );
    if generation != Generation::Legacy {
        u.set("inference_geo", "");
        u.set("iterations", J::Arr(vec![]));
        u.set("speed", "standard");
    }
    if generation == Generation::Current {
        u.set("fallback_credit", J::Null);
    }
    u
}

/// The per-call usage inside an assistant message (`output_tokens` is 1 there, as in the
/// real stream, where the final count only arrives with `message_delta`).
pub fn message_usage(t: Tokens) -> J {
    obj! {
        "input_tokens" => t.input,
        "cache_creation_input_tokens" => t.cache_create,
        "cache_read_input_tokens" => t.cache_read,
        "output_tokens" => 1,
    }
}

/// The result's `modelUsage` object.
pub fn model_usage_json(m: &ModelUsage, generation: Generation) -> J {
    J::Obj(
        m.iter()
            .map(|(model, t)| {
                let mut e = obj! {
                    "inputTokens" => t.input,
                    "outputTokens" => t.output,
                    "cacheReadInputTokens" => t.cache_read,
                    "cacheCreationInputTokens" => t.cache_create,
                    "webSearchRequests" => 0,
                    "costUSD" => t.cost,
                    "contextWindow" => if generation == Generation::Legacy { 200_000 } else { 1_000_000 },
                };
                if generation != Generation::Legacy {
                    e.set("maxOutputTokens", 128_000);
                }
                if generation == Generation::Current {
                    e.set("thinkingTokens", 0);
                    e.set("cacheCreationEphemeral5mInputTokens", 0);
                    e.set("cacheCreationEphemeral1hInputTokens", 0);
                    e.set("canonicalModel", model.as_str());
                    e.set("provider", "firstParty");
                    e.set("costBasis", "list");
                }
                (model.clone(), e)
            })
            .collect(),
    )
}

/// Reads a `modelUsage` object back (from a session's `cost-state` record).
pub fn model_usage_from(v: &serde_json::Value) -> ModelUsage {
    let mut out = ModelUsage::new();
    if let Some(map) = v.as_object() {
        for (model, e) in map {
            let n = |k: &str| e.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
            out.insert(
                model.clone(),
                Tokens {
                    input: n("inputTokens"),
                    output: n("outputTokens"),
                    cache_read: n("cacheReadInputTokens"),
                    cache_create: n("cacheCreationInputTokens"),
                    cost: e
                        .get("costUSD")
                        .and_then(serde_json::Value::as_f64)
                        .unwrap_or(0.0),
                },
            );
        }
    }
    out
}
