//! `.env.example`, the README's configuration table and the code name the same variables with
//! the same defaults. The code is the reference: [`Config::describe`] lists every effective
//! setting, and `RawEnv` in src/config/mod.rs lists every variable read (including aliases such
//! as `NODE_ENV` and `PORT`, which `describe` folds into `APP_ENV` and `HEALTH_CHECK_PORT`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use step_worker::Config;

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every effective setting's name and its value with no variable set.
fn described_defaults() -> BTreeMap<&'static str, String> {
    let config = Config::from_vars(Vec::<(String, String)>::new()).expect("defaults are valid");
    let mut defaults: BTreeMap<_, _> = config.describe().into_iter().collect();
    // `describe` redacts URLs; the defaults themselves hold no secret.
    defaults.insert("REDIS_URL", config.redis_url.expose().to_owned());
    defaults.insert("DATABASE_URL", config.database_url.expose().to_owned());
    defaults
}

/// Field names of `struct RawEnv`, upper-cased: the variables envy reads from the environment.
fn raw_env_variables() -> BTreeSet<String> {
    let source = read("src/config/mod.rs");
    let body = source
        .split_once("struct RawEnv {")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(body, _)| body)
        .expect("src/config/mod.rs defines `struct RawEnv { .. }`");
    body.lines()
        .filter_map(|l| l.trim().split_once(": Option<String>"))
        .map(|(name, _)| name.to_uppercase())
        .collect()
}

/// The "## Configuration" section of README.md, up to the next `## ` heading.
fn readme_configuration_section() -> String {
    let readme = read("README.md");
    let (_, rest) = readme
        .split_once("\n## Configuration\n")
        .expect("README.md has a '## Configuration' section");
    rest.split("\n## ").next().unwrap_or_default().to_owned()
}

/// Table rows of that section whose first cell is a backtick-quoted variable name:
/// name → default cell.
fn readme_table() -> BTreeMap<String, String> {
    readme_configuration_section()
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().strip_prefix('|')?.split('|').map(str::trim).collect();
            let name = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_owned(), cells.get(1).copied().unwrap_or_default().to_owned()))
        })
        .collect()
}

/// A `NAME=value` line of `.env.example`, set or commented out (`# NAME=value`).
#[derive(Debug)]
struct ExampleLine {
    value: String,
    commented: bool,
}

fn env_example() -> BTreeMap<String, ExampleLine> {
    let mut lines = BTreeMap::new();
    for line in read(".env.example").lines() {
        let (text, commented) = match line.strip_prefix('#') {
            Some(rest) => (rest.trim_start(), true),
            None => (line.trim(), false),
        };
        let Some((name, value)) = text.split_once('=') else {
            continue;
        };
        let is_variable = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !is_variable {
            continue;
        }
        let previous = lines.insert(
            name.to_owned(),
            ExampleLine {
                value: value.to_owned(),
                commented,
            },
        );
        assert!(previous.is_none(), ".env.example: {name} appears twice");
    }
    lines
}

/// Fails with the names each side lacks.
fn assert_same_names(what: &str, expected: &BTreeSet<String>, actual: &BTreeSet<String>) {
    let missing: Vec<_> = expected.difference(actual).collect();
    let extra: Vec<_> = actual.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, not read by the code {extra:?}"
    );
}

#[test]
fn every_described_setting_is_a_variable_the_code_reads() {
    let raw = raw_env_variables();
    for name in described_defaults().keys() {
        assert!(
            raw.contains(*name),
            "describe() lists {name}, which RawEnv does not read"
        );
    }
}

#[test]
fn env_example_lists_exactly_the_described_variables() {
    let described: BTreeSet<String> = described_defaults().keys().map(|k| k.to_string()).collect();
    let example: BTreeSet<String> = env_example().into_keys().collect();
    assert_same_names(".env.example", &described, &example);
}

#[test]
fn readme_configuration_table_lists_exactly_the_described_variables() {
    let described: BTreeSet<String> = described_defaults().keys().map(|k| k.to_string()).collect();
    let readme: BTreeSet<String> = readme_table().into_keys().collect();
    assert_same_names("README.md configuration table", &described, &readme);
}

#[test]
fn aliases_the_code_reads_are_mentioned_in_env_example_and_the_readme() {
    let example = read(".env.example");
    let readme = readme_configuration_section();
    for name in raw_env_variables() {
        assert!(example.contains(&name), ".env.example never mentions {name}");
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md configuration never mentions `{name}`"
        );
    }
}

#[test]
fn readme_defaults_are_the_codes_defaults() {
    let table = readme_table();
    for (name, default) in described_defaults() {
        let Some(cell) = table.get(name) else { continue };
        // An optional integration is off by default: the code describes it as empty.
        if default.is_empty() {
            assert_eq!(
                cell.trim(),
                "unset",
                "README.md: {name} has no default in the code, the table says {cell}"
            );
            continue;
        }
        assert!(
            cell.contains(&format!("`{default}`")),
            "README.md: the default of {name} is `{default}` in the code, the table says {cell}"
        );
    }
}

#[test]
fn env_example_as_written_is_valid_and_its_commented_values_are_the_defaults() {
    let example = env_example();
    let set: Vec<(String, String)> = example
        .iter()
        .filter(|(_, line)| !line.commented)
        .map(|(name, line)| (name.clone(), line.value.clone()))
        .collect();
    let config =
        Config::from_vars(set.clone()).unwrap_or_else(|e| panic!(".env.example is not a valid configuration: {e}"));
    // What the worker uses for a commented-out variable, given the variables the file sets.
    let effective: BTreeMap<_, _> = config.describe().into_iter().collect();
    for (name, line) in example.iter().filter(|(_, line)| line.commented) {
        let actual = effective
            .get(name.as_str())
            .unwrap_or_else(|| panic!(".env.example: {name} is not a variable the worker reads"));
        // An optional integration is unset by default; its commented line shows the expected form.
        if actual.is_empty() {
            assert!(
                line.value.contains('<'),
                ".env.example: {name} is unset by default; show a <placeholder> form"
            );
            continue;
        }
        assert_eq!(
            &line.value, actual,
            ".env.example: `# {name}={}` but the worker uses {actual} when it is unset",
            line.value
        );
    }
    assert!(
        set.iter().any(|(name, _)| name == "APP_ENV"),
        ".env.example sets APP_ENV"
    );
}

#[test]
fn env_example_holds_placeholders_not_credentials() {
    for (name, line) in env_example() {
        let Some((_, rest)) = line.value.split_once("://") else {
            continue;
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
            assert!(
                password.starts_with('<') && password.ends_with('>'),
                ".env.example: {name} carries a password; use a <placeholder>"
            );
        }
    }
}
