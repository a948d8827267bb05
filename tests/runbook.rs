//! RUNBOOK.md is what an operator types during an incident, so it must stay true to the binary
//! and to the alert rules that link to it:
//! - every `step-worker …` command in its fenced code blocks names a real subcommand, uses only
//!   flags that subcommand's `--help` lists, and gives values its parsers accept;
//! - every alert in `deploy/prometheus/*.yml` has a `runbook_url` whose anchor exists in it.
//!
//! What counts as a command: inside a fenced block, a line that starts with `step-worker `, or
//! the part of a line from `-- step-worker ` (`railway run … -- step-worker …`) or from
//! `/usr/local/bin/step-worker ` (`fly ssh console -C "…"`, up to the closing quote). Lines ending
//! in `\` are joined first. A command ends at an unquoted `|`, `;`, `&`, `>` or `#` comment.
//!
//! Placeholders such as `<dead-letter-id>` are replaced by a value of the right form from
//! [`PLACEHOLDERS`] before the command runs, so the value parsers check the rest (an id must be a
//! UUID, `--since` a duration). An unknown placeholder fails the test: add it to the table.
//!
//! Each command runs as `step-worker <args> --help`: clap prints the help of the subcommand and
//! exits 0 only when the subcommand path exists and every argument before `--help` parsed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The runbook has more than this many commands; fewer means the extraction broke.
const MIN_COMMANDS: usize = 40;

/// Placeholder → the value substituted for it.
const PLACEHOLDERS: &[(&str, &str)] = &[
    ("dead-letter-id", "0190b3f2-6c1e-7b3a-9a4e-3f1c2d4e5f60"),
    ("step", "email.send"),
    ("run-id", "run-2041"),
    ("job-id", "job-2041"),
];

/// A `--help` run that takes longer than this did not stop at the help: it is doing real work.
const HELP_DEADLINE: Duration = Duration::from_secs(20);

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn runbook() -> String {
    std::fs::read_to_string(repo_file("RUNBOOK.md")).expect("RUNBOOK.md exists")
}

/// A command found in the runbook: its line number, its text and its arguments after the binary.
#[derive(Debug)]
struct Found {
    line: usize,
    text: String,
    args: Vec<String>,
}

/// Every `step-worker` command in the fenced code blocks of `markdown`.
fn commands(markdown: &str) -> Vec<Found> {
    let mut found = Vec::new();
    let mut in_fence = false;
    let mut pending: Option<(usize, String)> = None;
    for (n, raw) in markdown.lines().enumerate() {
        if raw.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            continue;
        }
        // Join continuation lines, keeping the number of the first.
        let (line_no, mut line) = pending.take().unwrap_or((n + 1, String::new()));
        line.push_str(raw.trim());
        if let Some(joined) = line.strip_suffix('\\') {
            pending = Some((line_no, format!("{joined} ")));
            continue;
        }
        if let Some(text) = command_text(&line) {
            let text = substitute(&text).unwrap_or_else(|e| panic!("RUNBOOK.md line {line_no}: {e}"));
            let mut words = split(&text);
            assert_eq!(words.remove(0), "step-worker", "line {line_no}");
            found.push(Found {
                line: line_no,
                text,
                args: words,
            });
        }
    }
    found
}

/// The command on one line, starting with `step-worker`, if the line has one.
fn command_text(line: &str) -> Option<String> {
    if line.starts_with("step-worker ") {
        return Some(line.to_owned());
    }
    if let Some(at) = line.find("-- step-worker ") {
        return Some(line[at + 3..].to_owned());
    }
    let at = line.find("/usr/local/bin/step-worker ")?;
    let rest = &line[at + "/usr/local/bin/".len()..];
    // Quoted as one argument of another tool: the command ends at the matching quote.
    let opening = line[..at].chars().last().filter(|c| *c == '"' || *c == '\'');
    Some(match opening.and_then(|q| rest.find(q).map(|end| &rest[..end])) {
        Some(inside) => inside.to_owned(),
        None => rest.to_owned(),
    })
}

/// Replaces every `<name>` with its value from [`PLACEHOLDERS`].
fn substitute(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let close = rest[open..]
            .find('>')
            .ok_or_else(|| format!("unclosed placeholder in {text:?}"))?;
        let name = &rest[open + 1..open + close];
        let value = PLACEHOLDERS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("placeholder <{name}> has no substitute in PLACEHOLDERS"))?;
        out.push_str(&rest[..open]);
        out.push_str(value);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Splits a command line into words as a POSIX shell would for the forms a runbook uses: single
/// and double quotes, backslash escapes, and the end of the command at `|`, `;`, `&`, `>`, `<`
/// or a `#` comment outside quotes.
fn split(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                word.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            '|' | ';' | '&' | '>' | '<' => break,
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Runs the binary with `args`, far from any real Redis or Postgres in case `--help` does not
/// stop it. Returns the exit code and standard output (with standard error after it).
fn step_worker(args: &[String]) -> (Option<i32>, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_step-worker"))
        .env_clear()
        .env("APP_ENV", "test")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/nothing")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the step-worker binary starts");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(HELP_DEADLINE) {
        Ok(out) => out.expect("step-worker output"),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("step-worker {args:?} still ran after {HELP_DEADLINE:?}: --help did not stop it");
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// Help texts by subcommand path, so each is read once.
#[derive(Default)]
struct Helps(HashMap<Vec<String>, String>);

impl Helps {
    fn of(&mut self, path: &[String]) -> &str {
        self.0.entry(path.to_vec()).or_insert_with(|| {
            let args: Vec<String> = path.iter().cloned().chain(["--help".to_owned()]).collect();
            let (code, text) = step_worker(&args);
            assert_eq!(code, Some(0), "step-worker {path:?} --help:\n{text}");
            text
        })
    }

    /// The subcommands a help text lists under `Commands:`.
    fn subcommands(&mut self, path: &[String]) -> Vec<String> {
        self.of(path)
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// The subcommand path at the start of `args`: the words that name subcommands.
    fn path_of(&mut self, args: &[String]) -> Vec<String> {
        let mut path = Vec::new();
        for arg in args {
            if !self.subcommands(&path).contains(arg) {
                break;
            }
            path.push(arg.clone());
        }
        path
    }
}

/// Why `args` does not work, or `None` when it does.
fn check(helps: &mut Helps, args: &[String]) -> Option<String> {
    let with_help: Vec<String> = args.iter().cloned().chain(["--help".to_owned()]).collect();
    let (code, text) = step_worker(&with_help);
    if code != Some(0) || !text.contains("Usage:") {
        return Some(format!("`--help` exited with {code:?}:\n{text}"));
    }
    let path = helps.path_of(args);
    let help = helps.of(&path).to_owned();
    let missing: Vec<&str> = args
        .iter()
        .filter(|a| a.starts_with('-') && a.len() > 1)
        .map(|a| a.split('=').next().unwrap_or(a))
        .filter(|flag| !lists_flag(&help, flag))
        .collect();
    (!missing.is_empty()).then(|| format!("`step-worker {} --help` does not list {missing:?}", path.join(" ")))
}

/// Whether `help` names `flag` as a whole word (`--step` must not match `--steps`).
fn lists_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        let next = help[at + flag.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn every_step_worker_command_in_the_runbook_parses_and_uses_only_listed_flags() {
    let found = commands(&runbook());
    assert!(
        found.len() >= MIN_COMMANDS,
        "only {} step-worker commands found in RUNBOOK.md (expected at least {MIN_COMMANDS})",
        found.len()
    );
    let mut helps = Helps::default();
    let failures: Vec<String> = found
        .iter()
        .filter_map(|f| check(&mut helps, &f.args).map(|why| format!("line {}: {}\n  {why}", f.line, f.text)))
        .collect();
    assert!(
        failures.is_empty(),
        "RUNBOOK.md commands that do not work:\n{}",
        failures.join("\n")
    );
    println!("checked {} step-worker commands from RUNBOOK.md", found.len());
}

#[test]
fn the_check_rejects_a_missing_subcommand_an_unknown_flag_and_a_bad_value() {
    let mut helps = Helps::default();
    assert!(check(&mut helps, &split("dlq list --since 2h --step email.send")).is_none());
    assert!(check(&mut helps, &split("dlq frobnicate")).is_some());
    assert!(check(&mut helps, &split("dlq replay --everything")).is_some());
    assert!(check(&mut helps, &split("dlq show not-a-uuid")).is_some());
    assert!(
        check(&mut helps, &split("pause --step")).is_some(),
        "--step needs a value"
    );
}

#[test]
fn commands_are_taken_from_fences_only_with_quotes_pipes_and_placeholders_handled() {
    let markdown = r#"
Prose mentions step-worker stats --json but is not a command.

```sh
step-worker dlq show <dead-letter-id> --json   # a comment
step-worker enqueue '{"id":"a b","step":"x"}' | tee out
railway run --service <service> -- step-worker pause --step <step>
fly ssh console -C "/usr/local/bin/step-worker stats --json"
step-worker dlq replay \
  --reason purged --dry-run
docker build -t step-worker .
```
"#;
    let found: Vec<Vec<String>> = commands(markdown).into_iter().map(|f| f.args).collect();
    let expected: Vec<Vec<&str>> = vec![
        vec!["dlq", "show", "0190b3f2-6c1e-7b3a-9a4e-3f1c2d4e5f60", "--json"],
        vec!["enqueue", r#"{"id":"a b","step":"x"}"#],
        vec!["pause", "--step", "email.send"],
        vec!["stats", "--json"],
        vec!["dlq", "replay", "--reason", "purged", "--dry-run"],
    ];
    assert_eq!(found, expected);
    assert!(substitute("step-worker dlq show <unknown>").is_err());
}

#[test]
fn every_alert_links_to_an_anchor_that_exists_in_the_runbook() {
    let runbook = runbook();
    let dir = repo_file("deploy/prometheus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/prometheus exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rule files in {}", dir.display());

    let mut alerts = 0;
    for file in &files {
        let rules = std::fs::read_to_string(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy();
        // (alert, its runbook_url values) in file order.
        let mut links: Vec<(String, Vec<String>)> = Vec::new();
        for line in rules.lines().map(str::trim) {
            if let Some(alert) = line.strip_prefix("- alert:") {
                links.push((alert.trim().to_owned(), Vec::new()));
            } else if let Some(url) = line.strip_prefix("runbook_url:") {
                let url = url.trim().trim_matches('"').trim_matches('\'').to_owned();
                links
                    .last_mut()
                    .unwrap_or_else(|| panic!("{name}: runbook_url before any alert"))
                    .1
                    .push(url);
            }
        }
        for (alert, urls) in &links {
            let anchor = format!("alert-{}", alert.to_lowercase());
            assert_eq!(urls, &[format!("RUNBOOK.md#{anchor}")], "{name}: {alert}");
            let tag = format!(r#"<a id="{anchor}"></a>"#);
            assert_eq!(runbook.matches(&tag).count(), 1, "RUNBOOK.md needs exactly one {tag}");
        }
        alerts += links.len();
    }
    assert!(alerts > 0, "no alerts found in {files:?}");
    println!("{alerts} alerts link to RUNBOOK.md anchors");
}
