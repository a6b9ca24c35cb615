use super::defaults::DEFAULT_STORAGE_URL;
use super::*;

pub(super) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn load(text: &str) -> Result<Settings, ConfigError> {
    Settings::from_toml(text, Some(PathBuf::from("test.toml")), &env(&[]))
}

pub(super) const EXAMPLE: &str = include_str!("../../examples/batchyard.toml");

#[test]
fn the_issue_example_loads_as_written() {
    let s = load(EXAMPLE).unwrap();
    assert_eq!(s.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
    assert_eq!(s.storage_url, "s3://batchyard/results");
    let small = s.catalog.model("small").unwrap();
    assert_eq!(small.name, "small-1");
    assert_eq!(small.rpm, Some(600));
    assert_eq!(s.catalog.model("large").unwrap().tier, 3);
    assert_eq!(
        s.catalog.task("summarize").unwrap().max_output_tokens,
        Some(300)
    );
    assert!(
        s.warnings.iter().any(|w| w.contains("providers.sim")),
        "{:?}",
        s.warnings
    );
}

#[test]
fn no_file_gives_simulated_defaults() {
    let s = Settings::from_raw(RawConfig::default(), None, &env(&[])).unwrap();
    assert!(s.redis_url.is_none());
    assert_eq!(s.storage_url, DEFAULT_STORAGE_URL);
    let keys: Vec<_> = s.catalog.model_keys().into_iter().collect();
    assert_eq!(keys, ["large", "medium", "small"]);
    assert!(s.catalog.task("summarize").is_some());
}

#[test]
fn env_overrides_urls() {
    let s = Settings::from_toml(
        EXAMPLE,
        None,
        &env(&[
            ("BATCHYARD_REDIS_URL", "redis://10.0.0.1:6380"),
            ("BATCHYARD_STORAGE_URL", "file:///tmp/x"),
        ]),
    )
    .unwrap();
    assert_eq!(s.redis_url.as_deref(), Some("redis://10.0.0.1:6380"));
    assert_eq!(s.storage_url, "file:///tmp/x");
}

#[test]
fn unknown_key_names_file_key_and_line() {
    let text = EXAMPLE.replace("tier = 3", "tier = 3\ncolour = \"blue\"");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("test.toml:"), "{e}");
    assert!(e.contains("colour"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn model_with_unknown_provider_is_rejected() {
    let text = EXAMPLE.replace(
        "provider = \"local\"\nname = \"large-1\"",
        "provider = \"nope\"\nname = \"large-1\"",
    );
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("models.large.provider"), "{e}");
    assert!(e.contains("unknown provider \"nope\""), "{e}");
}

#[test]
fn missing_price_is_rejected() {
    let text = EXAMPLE.replace("input_usd_per_mtok = 2.50\n", "");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("input_usd_per_mtok"), "{e}");
    assert!(e.contains("test.toml"), "{e}");
}

#[test]
fn negative_price_is_rejected() {
    let text = EXAMPLE.replace("output_usd_per_mtok = 10.00", "output_usd_per_mtok = -1.0");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("models.large.output_usd_per_mtok"), "{e}");
}

#[test]
fn cache_prices_are_read_and_checked() {
    let s = load(EXAMPLE).unwrap();
    let large = s.catalog.model("large").unwrap();
    assert_eq!(
        (
            large.cached_input_usd_per_mtok,
            large.cache_write_usd_per_mtok
        ),
        (None, None)
    );
    let priced = EXAMPLE.replace(
        "output_usd_per_mtok = 10.00",
        "output_usd_per_mtok = 10.00\ncached_input_usd_per_mtok = 1.25\ncache_write_usd_per_mtok = 3.125",
    );
    let s = load(&priced).unwrap();
    let large = s.catalog.model("large").unwrap();
    assert_eq!(large.cached_input_usd_per_mtok, Some(1.25));
    assert_eq!(large.cache_write_usd_per_mtok, Some(3.125));
    let e = load(&priced.replace("3.125", "-0.5"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("models.large.cache_write_usd_per_mtok"), "{e}");
    assert!(e.contains("price must be 0 or more"), "{e}");
}

#[test]
fn bad_urls_are_rejected() {
    let e = load(&EXAMPLE.replace("http://127.0.0.1:8089/v1", "not a url"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("providers.local.base_url"), "{e}");
    let e = load(&EXAMPLE.replace("s3://batchyard/results", "ftp://x/y"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("storage.url"), "{e}");
    let e = load(&EXAMPLE.replace("redis://127.0.0.1:6379", "http://x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("queue.redis_url"), "{e}");
}

#[test]
fn a_redis_cluster_url_is_taken_and_a_bad_one_named() {
    let url = "rediss+cluster://:pw@node-1:6379,node-2:6379";
    let s = load(&EXAMPLE.replace("redis://127.0.0.1:6379", url)).unwrap();
    assert_eq!(s.redis_url.as_deref(), Some(url));
    assert!(
        s.warnings
            .join("\n")
            .contains("queue.redis_url: holds a password"),
        "{:?}",
        s.warnings
    );
    let e = load(&EXAMPLE.replace(
        "redis://127.0.0.1:6379",
        "redis+cluster://:s3cret@node-1:6379/2",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("queue.redis_url") && e.contains("only database 0"),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");
}

#[test]
fn redis_password_is_not_echoed() {
    let e = load(&EXAMPLE.replace("redis://127.0.0.1:6379", "redis://:s3cret@[bad"))
        .unwrap_err()
        .to_string();
    assert!(!e.contains("s3cret"), "{e}");
}

#[test]
fn bad_template_is_rejected_at_load() {
    let e = load(&EXAMPLE.replace("{{ text }}", "{{ text "))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tasks.summarize.prompt"), "{e}");
}

#[test]
fn unknown_provider_kind_is_rejected() {
    let e = load(&EXAMPLE.replace("kind = \"simulated\"", "kind = \"magic\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("providers.sim.kind"), "{e}");
}

#[test]
fn api_key_comes_from_env_and_is_never_printed() {
    let s =
        Settings::from_toml(EXAMPLE, None, &env(&[("LOCAL_API_KEY", "sk-verysecret")])).unwrap();
    let debug = format!("{s:?} {:?}", s.catalog.provider("local"));
    assert!(!debug.contains("sk-verysecret"), "{debug}");
}

#[test]
fn the_compose_config_loads_with_builtin_models() {
    let text = include_str!("../../examples/compose.toml");
    let s = load(text).unwrap();
    assert_eq!(s.concurrency, 64);
    assert!(s.catalog.model("small").is_some());
}

#[test]
fn routing_and_cache_have_defaults_and_checked_values() {
    let s = Settings::from_raw(RawConfig::default(), None, &env(&[])).unwrap();
    assert!(s.routing.learn);
    assert_eq!(s.routing.exploration, 0.5);
    assert!(s.cache.enabled);
    assert_eq!(s.cache.ttl, Duration::from_secs(30 * 24 * 3600));

    let s = load(
        "[routing]\nlearn = false\nexploration = 1.0\n[cache]\nenabled = false\nttl_secs = 60\n",
    )
    .unwrap();
    assert!(!s.routing.learn);
    assert_eq!(s.routing.exploration, 1.0);
    assert!(!s.cache.enabled);
    assert_eq!(s.cache.ttl, Duration::from_secs(60));

    for (text, key) in [
        ("[routing]\nexploration = 2.0\n", "routing.exploration"),
        ("[routing]\nprior_strength = 0\n", "routing.prior_strength"),
        ("[routing]\nmax_evidence = 1\n", "routing.max_evidence"),
        ("[cache]\nttl_secs = 0\n", "cache.ttl_secs"),
    ] {
        let e = load(text).err().unwrap();
        assert_eq!(e.key, key, "{e}");
        assert!(e.to_string().contains("test.toml"), "{e}");
    }
    let e = load("[routing]\nlearning = true\n").err().unwrap();
    assert!(e.to_string().contains("learning"), "{e}");
}

#[test]
fn a_task_response_format_is_sent_with_its_calls() {
    let text = r#"
[tasks.extract]
prompt = "{{ text }}"
response_format = { type = "json_schema", json_schema = { name = "x", schema = { type = "object" } } }
"#;
    let s = load(text).unwrap();
    let mut fields = serde_json::Map::new();
    fields.insert("text".into(), serde_json::Value::String("hi".into()));
    let body = s.catalog.render_document("extract", &fields).unwrap();
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(
        body["response_format"]["json_schema"]["schema"]["type"],
        "object"
    );
    let e = load("[tasks.t]\nprompt = \"x\"\nresponse_format = { schema = {} }\n")
        .err()
        .unwrap();
    assert_eq!(e.key, "tasks.t.response_format", "{e}");
}

#[test]
fn secrets_inline_are_refused_without_being_echoed() {
    let secret = "sk-live-never-shown-9";
    let table = "[providers.local]\n";
    let after_table = |line: &str| (table, format!("{table}{line}\n"));
    for ((from, to), key) in [
        (
            after_table(&format!("api_key = \"{secret}\"")),
            "providers.local.api_key",
        ),
        (
            after_table(&format!("api_key = {secret}")),
            "providers.local.api_key",
        ),
        (
            (
                "api_key_env = \"LOCAL_API_KEY\"",
                format!("api_key_env = \"{secret}\""),
            ),
            "providers.local.api_key_env",
        ),
        (
            after_table(&format!(
                "headers = {{ authorization = \"Bearer {secret}\" }}"
            )),
            "providers.local.headers.authorization",
        ),
        (
            after_table(&format!("headers = \"Bearer {secret}\"")),
            "providers.local.headers",
        ),
        (
            (
                "http://127.0.0.1:8089/v1",
                format!("https://u:{secret}@example.com/v1"),
            ),
            "providers.local.base_url",
        ),
    ] {
        let text = EXAMPLE.replace(from, &to);
        assert_ne!(text, EXAMPLE, "the example has no {from:?}");
        let e = load(&text).err().unwrap();
        let shown = e.to_string();
        assert_eq!(e.key, key, "{shown}");
        assert!(!shown.contains(secret), "{shown}");
    }
    let (from, to) = after_table(&format!("api_key = \"{secret}\""));
    let e = load(&EXAMPLE.replace(from, &to)).err().unwrap();
    assert!(e.reason.contains("api_key_env"), "{e}");
}

#[test]
fn a_password_in_a_url_of_the_file_is_a_warning() {
    let s = load(&EXAMPLE.replace(
        "redis://127.0.0.1:6379",
        "redis://:pw-in-file@127.0.0.1:6379",
    ))
    .unwrap();
    let warnings = s.warnings.join("\n");
    assert!(
        warnings.contains("queue.redis_url: holds a password"),
        "{warnings}"
    );
    assert!(!warnings.contains("pw-in-file"), "{warnings}");
    assert!(
        !load(EXAMPLE)
            .unwrap()
            .warnings
            .join("\n")
            .contains("password")
    );
}

#[test]
fn durations_and_line_limits_are_bounded() {
    for (text, key) in [
        (
            "[queue]\ndead_letter_retention_hours = 18446744073709551615\n",
            "queue.dead_letter_retention_hours",
        ),
        (
            "[queue]\nvisibility_timeout_secs = 18446744073709551615\n",
            "queue.visibility_timeout_secs",
        ),
        ("[retry]\ncap_ms = 18446744073709551615\n", "retry.cap_ms"),
        (
            "[cache]\nttl_secs = 18446744073709551615\n",
            "cache.ttl_secs",
        ),
        ("[input]\nmax_line_bytes = 0\n", "input.max_line_bytes"),
        (
            "[input]\nmax_line_bytes = 1099511627776\n",
            "input.max_line_bytes",
        ),
    ] {
        let e = load(text).err().unwrap();
        assert_eq!(e.key, key, "{e}");
    }
    assert!(load("[queue]\ndead_letter_retention_hours = 87600\n").is_ok());
}

#[test]
fn credential_headers_are_refused_by_what_their_name_says() {
    let secret = "sk-live-header-never-shown-7";
    let table = "[providers.local]\n";
    for name in [
        "\"authorization \"",
        "\" Authorization\"",
        "X-Auth-Token",
        "anthropic-api-key",
        "X-API-KEY",
        "Cookie",
        "x-amz-signature",
        "X-Client-Secret",
        "Proxy-Authorization",
    ] {
        let text = EXAMPLE.replace(
            table,
            &format!("{table}headers = {{ {name} = \"{secret}\" }}\n"),
        );
        let e = load(&text)
            .err()
            .unwrap_or_else(|| panic!("{name} got through"));
        let shown = e.to_string();
        assert!(e.key.starts_with("providers.local.headers."), "{shown}");
        assert!(e.reason.contains("${VAR}"), "{shown}");
        assert!(!shown.contains(secret), "{shown}");
    }
    // Ordinary headers pass, trimmed; a credential header may name an environment variable
    // (and is left out while the variable is unset).
    let raw: BTreeMap<String, String> = [
        (" anthropic-beta ", "prompt-caching"),
        ("X-Auth-Token", "${LOCAL_TOKEN}"),
        ("X-Unset-Key", "${UNSET_VAR}"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let at = |field: &str| format!("providers.local.{field}");
    let headers = parts::build_headers(&at, Some(&raw), &env(&[("LOCAL_TOKEN", secret)])).unwrap();
    assert_eq!(
        headers,
        [
            ("anthropic-beta".to_string(), "prompt-caching".to_string()),
            ("X-Auth-Token".to_string(), secret.to_string()),
        ]
    );
    let text = EXAMPLE.replace(
        table,
        &format!("{table}headers = {{ X-Auth-Token = \"${{LOCAL_TOKEN}}\" }}\n"),
    );
    assert!(load(&text).is_ok());
    // Not a header name at all.
    let e = load(&EXAMPLE.replace(table, &format!("{table}headers = {{ \"a b\" = \"x\" }}\n")))
        .err()
        .unwrap();
    assert!(e.reason.contains("not a valid HTTP header name"), "{e}");
}

#[test]
fn a_storage_url_with_keys_is_refused_from_the_file_and_the_environment() {
    let secret = "wJalrXUtnFEMI-never-shown";
    let url = format!("s3://AKIAEXAMPLE:{secret}@batchyard/results");
    let e = load(&EXAMPLE.replace("s3://batchyard/results", &url))
        .err()
        .unwrap();
    assert_eq!(e.key, "storage.url", "{e}");
    assert!(!e.to_string().contains(secret), "{e}");
    assert!(!e.to_string().contains("AKIAEXAMPLE"), "{e}");
    let e = Settings::from_toml(
        EXAMPLE,
        Some(PathBuf::from("test.toml")),
        &env(&[("BATCHYARD_STORAGE_URL", &url)]),
    )
    .err()
    .unwrap();
    assert_eq!(e.key, "storage.url", "{e}");
    assert!(e.reason.contains("AWS_ACCESS_KEY_ID"), "{e}");
    assert!(!e.to_string().contains(secret), "{e}");
}
