//! Command-line flags.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

pub const USAGE: &str = "\
usage: batchyard-fake-provider [--addr 127.0.0.1:0] [--require-key KEY]
  bedrock SigV4 check:  [--bedrock-secret SECRET] [--bedrock-key-id ID (AKIDFAKE)]
    [--credentials-ttl-secs N]  expiry of the credentials the AWS chain stand-ins hand out (3600)
  limits (fixed 60 s windows on the minute):  [--rpm N] [--tpm N] [--window-secs N]
  latency:  [--latency-ms N | --latency-p50-ms N] [--latency-dist fixed|uniform|lognormal]
            [--latency-sigma F]
  random faults (fractions of requests, summing to at most 1):
            [--fail-rate-429 F] [--fail-rate-500 F] [--fail-rate-502 F] [--fail-rate-503 F]
            [--fail-rate-529 F] [--drop-rate F] [--hang-rate F] [--malformed-rate F]
            [--length-rate F] [--filter-rate F]
  entra id (POST /{tenant}/oauth2/v2.0/token, GET /msi/token):
            [--entra-client-secret S]  the secret, assertion or X-IDENTITY-HEADER accepted; with
              it, Azure bearer tokens must be live ones issued here
            [--entra-token-ttl-secs N]  an issued token's life (3599)
  [--retry-after-secs N]  fault 429s also carry `retry-after: N` (off by default)
  [--hang-secs N]  how long a hung request waits before its connection is closed (600)
  [--reply MODEL=TEXT]  this model always answers TEXT (repeatable)
  skill mode (deterministic answer adequacy, for routing benchmarks):
            [--skills MODEL=SKILL,...]  e.g. tiny=0.25,small=0.5,medium=0.75,large=0.97
    When the last user message contains [[difficulty=D]] (D in [0,1]) and the request's model
    has a skill, the reply is `ANSWER: ok` if the model passes the item, else `ANSWER: wrong`:
      u = (first 8 bytes of SHA-256(model \\0 last_user_message), big-endian, >> 11) / 2^53
      q = 1 / (1 + exp(-12 * (skill - D)));  pass iff u < q
    Usage as always: prompt_tokens = floor(chars of all message contents / 4) + 4 per message
    (OpenAI dialect), completion_tokens = ceil(reply chars / 4) (3 for ok, 4 for wrong).
  prompt cache (per request): [[cached_tokens=N]] / [[cache_write_tokens=N]] in the last user
    message (or the x-fake-cached-tokens / x-fake-cache-write-tokens headers) make the usage
    report N prompt tokens read from / written to the cache (at most the prompt, reads first):
    openai prompt_tokens_details.cached_tokens (and cache_write_tokens), anthropic
    cache_read_input_tokens / cache_creation_input_tokens beside the rest in input_tokens.
  prompt cache (modelled, when no marker or header asks):
            [--prompt-cache-ttl-secs F]  how long a cached prefix lives, refreshed on a read
            (300, as Anthropic's and OpenAI's default; 0 turns the model off)
            [--prompt-cache-min-tokens N]  the shortest cacheable prefix (1024)
    anthropic, bedrock: prefixes ending at a block with cache_control (a cachePoint); the first call writes
    (cache_creation_input_tokens), later ones within the TTL read (cache_read_input_tokens).
    openai / azure: automatic, the longest cached prefix of 1024 + k * 128 tokens is read
    (prompt_tokens_details.cached_tokens).";

/// How latency is drawn; the median is `--latency-p50-ms` in each case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LatencyDist {
    /// Always the median.
    Fixed,
    /// Uniform between 0 and twice the median.
    Uniform,
    /// `median * exp(sigma * Z)`: mostly near the median, with a long right tail (capped at 20×).
    LogNormal { sigma: f64 },
}

/// A fault chosen at random, by rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomFault {
    Status(u16),
    Drop,
    Hang,
    Malformed,
    Length,
    Filter,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    pub require_key: Option<String>,
    /// The Entra ID client secret (or federated assertion, or managed-identity header) the
    /// token endpoints accept; with it, Azure bearer tokens must be live ones issued here.
    pub entra_client_secret: Option<String>,
    /// How long an issued Entra ID token lives.
    pub entra_token_ttl: Duration,
    /// Bedrock: the secret access key SigV4 signatures are checked with.
    pub bedrock_secret: Option<String>,
    /// Bedrock: the access key id it belongs to (`bedrock::DEFAULT_KEY_ID` when unset).
    pub bedrock_key_id: Option<String>,
    /// How long the credentials of the AWS chain stand-ins are valid.
    pub credentials_ttl_secs: u64,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// The limit window, 60 s like real providers; tests shorten it.
    pub window_secs: u64,
    pub latency_p50: Duration,
    pub latency_dist: LatencyDist,
    /// Each random fault with its rate; one draw picks at most one of them.
    pub fault_rates: Vec<(RandomFault, f64)>,
    pub hang: Duration,
    /// `--retry-after-secs`: a `retry-after` header on fault 429s.
    pub retry_after_secs: Option<u64>,
    /// Skill mode: provider-side model names and their skill in [0, 1].
    pub skills: Vec<(String, f64)>,
    /// `--reply MODEL=TEXT` (repeatable): this model always answers TEXT.
    pub replies: Vec<(String, String)>,
    /// How long a cached prompt prefix lives; zero turns the cache model off.
    pub prompt_cache_ttl: Duration,
    pub prompt_cache_min_tokens: u64,
    /// The `--batch-*` flags (see [`crate::batch::clock`]).
    pub batch: crate::batch::clock::BatchOptions,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            require_key: None,
            entra_client_secret: None,
            entra_token_ttl: Duration::from_secs(3599),
            bedrock_secret: None,
            bedrock_key_id: None,
            credentials_ttl_secs: 3600,
            rpm: None,
            tpm: None,
            window_secs: 60,
            latency_p50: Duration::ZERO,
            latency_dist: LatencyDist::Fixed,
            fault_rates: Vec::new(),
            hang: Duration::from_secs(600),
            retry_after_secs: None,
            skills: Vec::new(),
            replies: Vec::new(),
            prompt_cache_ttl: Duration::from_secs(300),
            prompt_cache_min_tokens: 1024,
            batch: crate::batch::clock::BatchOptions::default(),
        }
    }
}

impl Options {
    /// `Ok(None)` for `--help` (the usage has been printed).
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Self>, Box<dyn Error>> {
        let mut options = Self::default();
        let mut dist = "fixed".to_owned();
        let mut sigma = 0.6;
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                println!("{USAGE}\n{}", crate::batch::clock::USAGE);
                return Ok(None);
            }
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (flag.clone(), None),
            };
            // The one flag whose value is optional.
            if name == "--batch-expire" && inline.is_none() {
                options.batch.expire_done = Some(0.5);
                continue;
            }
            let value = match inline.or_else(|| args.next()) {
                Some(v) => v,
                None => return Err(format!("{name} needs a value\n{USAGE}").into()),
            };
            let fault = match name.as_str() {
                "--fail-rate-429" => Some(RandomFault::Status(429)),
                "--fail-rate-500" => Some(RandomFault::Status(500)),
                "--fail-rate-502" => Some(RandomFault::Status(502)),
                "--fail-rate-503" => Some(RandomFault::Status(503)),
                "--fail-rate-529" => Some(RandomFault::Status(529)),
                "--drop-rate" => Some(RandomFault::Drop),
                "--hang-rate" => Some(RandomFault::Hang),
                "--malformed-rate" => Some(RandomFault::Malformed),
                "--length-rate" => Some(RandomFault::Length),
                "--filter-rate" => Some(RandomFault::Filter),
                _ => None,
            };
            if let Some(fault) = fault {
                let rate = rate(&name, &value)?;
                options.fault_rates.retain(|(f, _)| *f != fault);
                if rate > 0.0 {
                    options.fault_rates.push((fault, rate));
                }
                continue;
            }
            if let Some(taken) = options.batch.take(&name, &value) {
                taken?;
                continue;
            }
            match name.as_str() {
                "--addr" => options.addr = value.parse()?,
                "--require-key" => options.require_key = Some(value),
                "--entra-client-secret" => options.entra_client_secret = Some(value),
                "--entra-token-ttl-secs" => {
                    options.entra_token_ttl = Duration::from_secs(positive(&name, &value)?);
                }
                "--bedrock-secret" => options.bedrock_secret = Some(value),
                "--bedrock-key-id" => options.bedrock_key_id = Some(value),
                "--credentials-ttl-secs" => options.credentials_ttl_secs = value.parse()?,
                "--rpm" => options.rpm = Some(positive(&name, &value)?),
                "--tpm" => options.tpm = Some(positive(&name, &value)?),
                "--window-secs" => options.window_secs = positive(&name, &value)?,
                // The same setting: --latency-ms predates the distributions.
                "--latency-ms" | "--latency-p50-ms" => {
                    options.latency_p50 = Duration::from_millis(value.parse()?);
                }
                "--latency-dist" => dist = value,
                "--latency-sigma" => {
                    sigma = value.parse()?;
                    if !(0.0..=3.0).contains(&sigma) {
                        return Err(format!("{name} must be between 0 and 3, not {value}").into());
                    }
                }
                "--hang-secs" => options.hang = Duration::from_secs(value.parse()?),
                "--prompt-cache-ttl-secs" => {
                    options.prompt_cache_ttl = Duration::try_from_secs_f64(value.parse()?)
                        .map_err(|_| format!("{name} must be a number of seconds, not {value}"))?;
                }
                "--prompt-cache-min-tokens" => {
                    options.prompt_cache_min_tokens = positive(&name, &value)?;
                }
                "--retry-after-secs" => options.retry_after_secs = Some(value.parse()?),
                "--skills" => options.skills = crate::skill::parse(&value)?,
                "--reply" => match value.split_once('=') {
                    Some((model, text)) if !model.is_empty() => {
                        options.replies.push((model.to_string(), text.to_string()));
                    }
                    _ => return Err(format!("{name} takes MODEL=TEXT, not {value:?}").into()),
                },
                _ => return Err(format!("unknown flag {name}\n{USAGE}").into()),
            }
        }
        options.latency_dist = match dist.as_str() {
            "fixed" => LatencyDist::Fixed,
            "uniform" => LatencyDist::Uniform,
            "lognormal" => LatencyDist::LogNormal { sigma },
            other => {
                return Err(format!(
                    "--latency-dist must be fixed, uniform or lognormal, not {other:?}"
                )
                .into());
            }
        };
        let total: f64 = options.fault_rates.iter().map(|(_, r)| r).sum();
        if total > 1.0 + 1e-9 {
            return Err(format!("the fault rates add up to {total}, more than 1").into());
        }
        if !options.addr.ip().is_loopback() {
            return Err(format!(
                "--addr {} is not a loopback address: the fake provider only binds 127.0.0.1 or ::1",
                options.addr
            )
            .into());
        }
        Ok(Some(options))
    }

    /// One latency draw.
    pub fn sample_latency(&self) -> Duration {
        let p50 = self.latency_p50.as_secs_f64();
        if p50 == 0.0 {
            return Duration::ZERO;
        }
        let secs = match self.latency_dist {
            LatencyDist::Fixed => p50,
            LatencyDist::Uniform => 2.0 * p50 * rand::random::<f64>(),
            LatencyDist::LogNormal { sigma } => {
                // Box-Muller: a standard normal from two uniforms; 1 - u avoids ln(0).
                let u1 = 1.0 - rand::random::<f64>();
                let u2 = rand::random::<f64>();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (p50 * (sigma * z).exp()).min(20.0 * p50)
            }
        };
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO)
    }

    /// At most one random fault, by the configured rates.
    pub fn draw_fault(&self) -> Option<RandomFault> {
        if self.fault_rates.is_empty() {
            return None;
        }
        let mut draw = rand::random::<f64>();
        for (fault, rate) in &self.fault_rates {
            if draw < *rate {
                return Some(*fault);
            }
            draw -= rate;
        }
        None
    }
}

fn rate(name: &str, value: &str) -> Result<f64, Box<dyn Error>> {
    let rate: f64 = value.parse()?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("{name} must be between 0 and 1, not {value}").into());
    }
    Ok(rate)
}

fn positive(name: &str, value: &str) -> Result<u64, Box<dyn Error>> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{name} must be a positive whole number, not {value:?}").into()),
    }
}
