//! The 3PL inbox (SPEC §5) over real files: a real server watching a temp dir,
//! good and bad rows, files that are not CSV, the same file dropped twice,
//! half-written files, a partner layout with mapping, and a restart (kill -9
//! and SIGTERM) in the middle of a large file.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{exceptions, head, metric, num, position, Server};

/// An `[[inbox]]` table for `dir` (fast polling for tests: 100 ms, and 200 ms
/// of stable size unless `extra` sets `stable_ms`) plus `extra` keys.
pub(crate) fn inbox_config(dir: &Path, extra: &str) -> String {
    let stable = if extra.contains("stable_ms") {
        ""
    } else {
        "stable_ms = 200\n"
    };
    format!(
        "[[inbox]]\ndir = \"{}\"\nsource = \"3pl-north\"\npoll_interval_ms = 100\n{stable}{extra}\n",
        dir.display()
    )
}

/// Writes `name` into `dir` the way a careful partner does: `name.part`, then rename.
pub(crate) fn drop_file(dir: &Path, name: &str, content: &[u8]) {
    let part = dir.join(format!("{name}.part"));
    fs::write(&part, content).expect("write part file");
    fs::rename(&part, dir.join(name)).expect("rename into place");
}

/// Waits (bounded) until `path` exists.
fn wait_for(path: &Path, limit: Duration) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < limit,
            "{} did not appear within {limit:?}; inbox holds {:?}",
            path.display(),
            listing(path.parent().and_then(Path::parent).unwrap_or(path))
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Every file under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                found.push(relative.display().to_string());
            }
        }
    }
    found.sort();
    found
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// The processed result of `name` once it is filed.
pub(crate) fn processed(dir: &Path, name: &str) -> Value {
    let data = dir.join("processed").join(name);
    wait_for(&data, Duration::from_secs(30));
    read_json(&dir.join("processed").join(format!("{name}.result.json")))
}

/// `on_hand` of a position, or `None` when the SKU has none.
fn on_hand(server: &Server, sku: &str, location: &str) -> Option<i64> {
    let (status, body) = server.get(&format!("/v1/availability/{sku}"));
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "{body}");
    body["locations"]
        .as_array()?
        .iter()
        .find(|p| p["location"] == location)
        .map(|p| num(p, "on_hand"))
}

#[test]
fn good_rows_apply_and_bad_rows_are_rejected_with_reasons() {
    let inbox = tempfile::tempdir().expect("inbox dir");
    let server = Server::start(&inbox_config(inbox.path(), ""));
    let csv = "sku,location,type,qty,reason\n\
               in-a,wh-east,receipt,20,\n\
               in-a,wh-east,adjustment,-3,damage\n\
               in-b,3pl-north,receipt,7,\n\
               in-b,3pl-north,quarantine,2,hold\n\
               in-b,3pl-north,return,1,\n\
               in-c,wh-west,count,11,\n\
               in-c,wh-west,in_transit,5,\n\
               bad sku,wh-east,receipt,1,\n\
               in-a,mars,receipt,1,\n\
               in-a,wh-east,receipt,0,\n\
               in-a,wh-east,receipt,lots,\n\
               in-a,wh-east,adjustment,4,\n\
               in-a,wh-east,transfer_out,1,\n\
               in-b,3pl-north,quarantine,50,scrap\n\
               \n\
               in-a,wh-east,receipt,2,\n";
    drop_file(inbox.path(), "stock.csv", csv.as_bytes());
    let result = processed(inbox.path(), "stock.csv");
    assert_eq!(result["status"], "processed", "{result}");
    assert_eq!(num(&result, "rows"), 15, "{result}");
    assert_eq!(num(&result, "applied"), 8, "{result}");
    assert_eq!(num(&result, "rejected"), 7, "{result}");
    assert!(num(&result, "first_seq") >= 1, "{result}");
    assert!(
        num(&result, "last_seq") >= num(&result, "first_seq"),
        "{result}"
    );
    assert_eq!(
        result["rejected_rows_file"], "rejected/stock.csv",
        "{result}"
    );

    // Applied rows changed positions, in file order per position.
    assert_eq!(on_hand(&server, "in-a", "wh-east"), Some(19));
    let b = position(&server, "in-b", "3pl-north");
    assert_eq!((num(&b, "on_hand"), num(&b, "quarantined")), (8, 3), "{b}");
    let c = position(&server, "in-c", "wh-west");
    assert_eq!((num(&c, "on_hand"), num(&c, "in_transit")), (11, 5), "{c}");
    assert_eq!(on_hand(&server, "in-a", "mars"), None);

    // Bad rows: the partner's row, then line, code and reason.
    let rejected = fs::read_to_string(inbox.path().join("rejected/stock.csv")).expect("rejects");
    let mut reader = csv::Reader::from_reader(rejected.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(
        header,
        [
            "sku",
            "location",
            "type",
            "qty",
            "reason",
            "rejected_line",
            "rejected_code",
            "rejected_reason"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    let codes: Vec<(&str, &str)> = rows.iter().map(|r| (&r[5], &r[6])).collect();
    assert_eq!(
        codes,
        [
            ("9", "invalid_id"),
            ("10", "unknown_location"),
            ("11", "quantity_out_of_range"),
            ("12", "bad_request"),
            ("13", "bad_request"),
            ("14", "unsupported_type"),
            ("15", "invalid_state"),
        ],
        "{rejected}"
    );
    assert!(
        rows.iter().all(|r| !r[7].is_empty()),
        "a reason per row: {rejected}"
    );
    assert_eq!(&rows[0][0], "bad sku", "the partner's row is kept as sent");

    // ... and in the exception queue, with the row.
    let queued = exceptions(&server, "");
    let file_id = result["file_id"].as_str().expect("file id");
    for (line, code) in [
        (9, "invalid_id"),
        (10, "unknown_location"),
        (14, "unsupported_type"),
        (15, "invalid_state"),
    ] {
        let event_id = format!("{file_id}-{line}");
        let found = queued
            .iter()
            .find(|e| e["event_id"] == event_id.as_str())
            .unwrap_or_else(|| panic!("{event_id} not queued: {queued:?}"));
        assert_eq!(found["code"], code, "{found}");
        assert_eq!(found["kind"], "rejected_event", "{found}");
        assert_eq!(found["source"], "3pl-north", "{found}");
        assert_eq!(found["payload"]["file"], "stock.csv", "{found}");
        assert_eq!(found["payload"]["line"], line, "{found}");
    }
    let rejected_here = queued
        .iter()
        .filter(|e| {
            e["event_id"]
                .as_str()
                .is_some_and(|id| id.starts_with(file_id))
        })
        .count();
    assert_eq!(rejected_here, 7);

    // Counted: applied and rejected events, and the file.
    assert_eq!(
        metric(
            &server,
            "stockwire_events_applied_total",
            &[("type", "receipt"), ("source", "3pl-north")]
        )
        .unwrap_or(0.0),
        3.0
    );
    assert_eq!(
        metric(
            &server,
            "stockwire_events_rejected_total",
            &[
                ("type", "transfer_out"),
                ("source", "3pl-north"),
                ("code", "unsupported_type")
            ]
        )
        .unwrap_or(0.0),
        1.0
    );
    assert_eq!(
        metric(
            &server,
            "stockwire_inbox_files_total",
            &[("source", "3pl-north"), ("outcome", "processed")]
        )
        .unwrap_or(0.0),
        1.0
    );
    assert_eq!(
        listing(inbox.path()),
        [
            "processed/stock.csv",
            "processed/stock.csv.result.json",
            "rejected/stock.csv"
        ]
    );
}

#[test]
fn a_file_that_is_not_csv_is_rejected_whole() {
    let inbox = tempfile::tempdir().expect("inbox dir");
    let server = Server::start(&inbox_config(inbox.path(), ""));
    let picture = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01";
    drop_file(inbox.path(), "photo.csv", picture);
    drop_file(
        inbox.path(),
        "letter.txt",
        b"Dear partner,\nplease find our stock attached.\n",
    );
    for (name, code) in [("photo.csv", "not_csv"), ("letter.txt", "missing_column")] {
        let whole = inbox.path().join("rejected").join(name);
        wait_for(&whole, Duration::from_secs(30));
        let original: &[u8] = if name == "photo.csv" {
            picture
        } else {
            b"Dear partner,\nplease find our stock attached.\n"
        };
        assert_eq!(fs::read(&whole).expect("moved whole"), original);
        let result = read_json(
            &inbox
                .path()
                .join("rejected")
                .join(format!("{name}.result.json")),
        );
        assert_eq!(result["status"], "rejected", "{result}");
        assert_eq!(result["code"], code, "{result}");
        assert!(
            result["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{result}"
        );
        let queued = exceptions(&server, "");
        let found = queued
            .iter()
            .find(|e| e["kind"] == "rejected_file" && e["payload"]["file"] == name)
            .unwrap_or_else(|| panic!("{name} not in the exception queue: {queued:?}"));
        assert_eq!(found["code"], code, "{found}");
        assert_eq!(found["source"], "3pl-north", "{found}");
    }
    assert_eq!(head(&server), 0, "nothing was applied");
    assert_eq!(
        metric(
            &server,
            "stockwire_inbox_files_total",
            &[("source", "3pl-north"), ("outcome", "rejected")]
        )
        .unwrap_or(0.0),
        2.0
    );
    assert!(!inbox.path().join("processed/photo.csv").exists());
}

#[test]
fn the_same_file_dropped_again_changes_nothing() {
    let inbox = tempfile::tempdir().expect("inbox dir");
    let server = Server::start(&inbox_config(inbox.path(), ""));
    let csv = "sku,location,type,qty,reason\n\
               dup-a,wh-east,receipt,10,\n\
               dup-a,wh-east,adjustment,-4,shrink\n\
               dup-b,wh-west,receipt,3,\n\
               dup-b,wh-west,quarantine,9,scrap\n";
    drop_file(inbox.path(), "daily.csv", csv.as_bytes());
    let first = processed(inbox.path(), "daily.csv");
    assert_eq!(
        (num(&first, "applied"), num(&first, "rejected")),
        (3, 1),
        "{first}"
    );
    let head_before = head(&server);
    let a_before = position(&server, "dup-a", "wh-east");
    let b_before = position(&server, "dup-b", "wh-west");
    let queued_before = exceptions(&server, "").len();

    drop_file(inbox.path(), "daily.csv", csv.as_bytes());
    let again = processed(inbox.path(), "daily.2.csv");
    assert_eq!(again["status"], "duplicate", "{again}");
    assert_eq!(again["duplicate_of"], "processed/daily.csv", "{again}");
    assert_eq!(num(&again, "duplicate"), 4, "{again}");
    assert_eq!(num(&again, "applied"), 0, "{again}");
    assert_eq!(again["file_id"], first["file_id"]);
    assert_eq!(head(&server), head_before, "the journal did not move");
    assert_eq!(position(&server, "dup-a", "wh-east"), a_before);
    assert_eq!(position(&server, "dup-b", "wh-west"), b_before);
    assert_eq!(
        exceptions(&server, "").len(),
        queued_before,
        "no rejection queued twice"
    );
    assert_eq!(
        metric(
            &server,
            "stockwire_inbox_files_total",
            &[("source", "3pl-north"), ("outcome", "duplicate")]
        )
        .unwrap_or(0.0),
        1.0
    );

    // The partner reuses the name for new content: that is a new file.
    drop_file(
        inbox.path(),
        "daily.csv",
        b"sku,location,type,qty,reason\ndup-a,wh-east,receipt,5,\n",
    );
    let reused = processed(inbox.path(), "daily.3.csv");
    assert_eq!(reused["status"], "processed", "{reused}");
    assert_eq!(num(&reused, "applied"), 1, "{reused}");
    assert_ne!(reused["file_id"], first["file_id"]);
    assert_eq!(on_hand(&server, "dup-a", "wh-east"), Some(11));
}

#[test]
fn a_half_written_file_is_not_read_until_complete() {
    let inbox = tempfile::tempdir().expect("inbox dir");
    // Size and mtime must hold for 1.5 s; the slow writer below writes every 0.2 s.
    let server = Server::start(&inbox_config(inbox.path(), "stable_ms = 1500"));
    // Write-then-rename: the `.part` file is never read.
    let part = inbox.path().join("late.csv.part");
    fs::write(
        &part,
        "sku,location,type,qty,reason\nhalf-a,wh-east,receipt,4,\n",
    )
    .expect("part");
    std::thread::sleep(Duration::from_millis(2000));
    assert!(part.exists(), "the .part file was touched");
    assert_eq!(on_hand(&server, "half-a", "wh-east"), None);
    fs::rename(&part, inbox.path().join("late.csv")).expect("rename");
    processed(inbox.path(), "late.csv");
    assert_eq!(on_hand(&server, "half-a", "wh-east"), Some(4));

    // Written in place, slowly: read only once it stopped growing.
    let path = inbox.path().join("slow.csv");
    let mut text = String::from("sku,location,type,qty,reason\n");
    fs::write(&path, &text).expect("start");
    for n in 0..8 {
        std::thread::sleep(Duration::from_millis(200));
        text.push_str(&format!("half-b,wh-east,receipt,{},\n", n + 1));
        fs::write(&path, &text).expect("grow");
        assert!(
            path.exists(),
            "claimed while still growing (after {n} rows)"
        );
        assert_eq!(on_hand(&server, "half-b", "wh-east"), None);
    }
    let result = processed(inbox.path(), "slow.csv");
    assert_eq!(num(&result, "applied"), 8, "{result}");
    assert_eq!(on_hand(&server, "half-b", "wh-east"), Some(36));
}

#[test]
fn a_partner_layout_with_code_mapping() {
    let inbox = tempfile::tempdir().expect("inbox dir");
    let layout = r#"delimiter = ";"
columns = { sku = "Item No", location = "Whse", type = "Txn", qty = "Units", reason = "Why", occurred_at = "Posted" }
date_format = "%d.%m.%Y %H:%M"
mapping = { skus = { "ACME-100" = "sku-100", "ACME-200" = "sku-200" }, locations = { "N1" = "3pl-north", "E1" = "wh-east" }, types = { "RCV" = "receipt", "ADJ" = "adjustment", "CNT" = "count" } }"#;
    let server = Server::start(&inbox_config(inbox.path(), layout));
    let csv = "Posted;Item No;Whse;Txn;Units;Why\n\
               05.03.2024 14:30;ACME-100;N1;RCV;12;\n\
               05.03.2024 15:00;ACME-100;N1;ADJ;-2;damage\n\
               06.03.2024 08:00;ACME-200;E1;CNT;40;\n\
               ;sku-300;wh-west;receipt;1;\n\
               yesterday;ACME-100;N1;RCV;1;\n\
               05.03.2024 16:00;ACME-999;X9;RCV;1;\n";
    drop_file(inbox.path(), "ACME_20240306.txt", csv.as_bytes());
    let result = processed(inbox.path(), "ACME_20240306.txt");
    assert_eq!(
        (num(&result, "applied"), num(&result, "rejected")),
        (4, 2),
        "{result}"
    );
    assert_eq!(on_hand(&server, "sku-100", "3pl-north"), Some(10));
    assert_eq!(on_hand(&server, "sku-200", "wh-east"), Some(40));
    assert_eq!(
        on_hand(&server, "sku-300", "wh-west"),
        Some(1),
        "our own codes pass as they are"
    );
    assert_eq!(on_hand(&server, "ACME-100", "3pl-north"), None);

    // The partner's time is the event's occurred_at (UTC without an offset).
    let (_, log) = server.get("/v1/events?after=0&limit=100");
    let received = log["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["sku"] == "sku-100" && e["type"] == "inventory.received")
        .cloned()
        .expect("the receipt in the log");
    assert_eq!(
        received["occurred_at"], "2024-03-05T14:30:00.000Z",
        "{received}"
    );
    assert_eq!(received["source"], "3pl-north");
    assert_eq!(received["correlation_id"], result["file_id"]);

    // Rejected rows keep the partner's layout (and delimiter), under a .csv name.
    let rejected =
        fs::read_to_string(inbox.path().join("rejected/ACME_20240306.txt.csv")).expect("rejects");
    let lines: Vec<&str> = rejected.lines().collect();
    assert_eq!(
        lines[0],
        "Posted;Item No;Whse;Txn;Units;Why;rejected_line;rejected_code;rejected_reason"
    );
    assert!(
        lines[1].starts_with("yesterday;ACME-100;N1;RCV;1;;6;bad_request;"),
        "{rejected}"
    );
    assert!(
        lines[2].starts_with("05.03.2024 16:00;ACME-999;X9;RCV;1;;7;unknown_location;"),
        "{rejected}"
    );
}

/// Waits until the journal head reaches `at_least` or the file is filed;
/// true when the head got there first (the file is still being processed).
fn wait_for_head(server: &Server, at_least: u64, filed: &Path) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if filed.exists() {
            return false;
        }
        if head(server) >= at_least {
            return !filed.exists();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("journal head never reached {at_least}");
}

#[test]
fn a_restart_in_the_middle_of_a_large_file_resumes_it() {
    const ROWS: usize = 20_000;
    const SKUS: usize = 250;
    let inbox = tempfile::tempdir().expect("inbox dir");
    // Chunks of 200 rows: many progress records, so a kill lands mid-file.
    let mut server = Server::start_with_base(
        &format!("batch_events_max = 200\n{}", crate::harness::BASE_CONFIG),
        &inbox_config(inbox.path(), ""),
    );
    // Receipts and negative adjustments; every SKU's first row is a receipt
    // of 10, so no adjustment is ever refused.
    let mut csv = String::from("sku,location,type,qty,reason\n");
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for row in 0..ROWS {
        let sku = format!("big-{}", row % SKUS);
        let total = expected.entry(sku.clone()).or_insert(0);
        if row >= SKUS && row % 4 == 3 {
            csv.push_str(&format!("{sku},wh-east,adjustment,-1,shrink\n"));
            *total -= 1;
        } else {
            let qty = if row < SKUS { 10 } else { 1 + (row % 5) as i64 };
            csv.push_str(&format!("{sku},wh-east,receipt,{qty},\n"));
            *total += qty;
        }
    }
    let filed: PathBuf = inbox.path().join("processed/big.csv");
    drop_file(inbox.path(), "big.csv", csv.as_bytes());

    let mid_file = wait_for_head(&server, 3_000, &filed);
    server.kill();
    assert!(
        mid_file,
        "the file was done before the kill: make it bigger"
    );
    assert!(
        inbox.path().join("processing/big.csv").exists(),
        "a file in progress stays in processing/: {:?}",
        listing(inbox.path())
    );
    server.spawn();
    let restarts = 2;
    // A clean stop mid-file too: the worker finishes its chunk, exit 0.
    assert!(
        wait_for_head(&server, 12_000, &filed),
        "the file was done before the SIGTERM: make it bigger"
    );
    assert_eq!(server.terminate(), Some(0), "SIGTERM mid-file exits 0");
    server.spawn();
    let result = processed(inbox.path(), "big.csv");
    assert_eq!(result["status"], "processed", "{result}");
    assert_eq!(num(&result, "rows"), ROWS as i64, "{result}");
    assert_eq!(
        num(&result, "applied") + num(&result, "already_applied"),
        ROWS as i64,
        "{result}"
    );
    assert_eq!(num(&result, "rejected"), 0, "{result}");
    assert_eq!(num(&result, "resumed"), restarts, "{result}");

    // Exactly as if processed once: every position, and every row's event
    // exactly once in the journal.
    for (sku, total) in &expected {
        assert_eq!(on_hand(&server, sku, "wh-east"), Some(*total), "{sku}");
    }
    let (events, _) = server.event_log(1000);
    let file_id = result["file_id"].as_str().expect("file id");
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .filter(|id| id.starts_with(file_id))
        .collect();
    assert_eq!(ids.len(), ROWS, "one journal entry per row");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ROWS,
        "no row twice"
    );
    assert!(!inbox.path().join("processing/big.csv").exists());
    assert!(
        listing(&inbox.path().join("processing")).is_empty(),
        "nothing left behind"
    );
}

/// Found in review: csv counts only `\n` as a line, so a file with bare `\r`
/// line ends (old Mac exports) gave every row the same event id, and all but
/// the first were dropped as duplicates.
#[test]
fn a_file_with_carriage_return_line_ends_applies_every_row() {
    let inbox = tempfile::tempdir().expect("inbox dir");
    let server = Server::start(&inbox_config(inbox.path(), ""));
    let rows: String = (0..5)
        .map(|i| format!("cr-{i},3pl-north,receipt,{},\r", i + 1))
        .collect();
    drop_file(
        inbox.path(),
        "mac.csv",
        format!("sku,location,type,qty,reason\r{rows}").as_bytes(),
    );
    wait_for(
        &inbox.path().join("processed").join("mac.csv.result.json"),
        Duration::from_secs(30),
    );
    let result = processed(inbox.path(), "mac.csv");
    assert_eq!(result["applied"], 5, "{result}");
    for i in 0..5 {
        assert_eq!(
            on_hand(&server, &format!("cr-{i}"), "3pl-north"),
            Some(i + 1)
        );
    }
}

/// A row of hundreds of kilobytes (here a megabyte of commas) is refused as a
/// whole file before the CSV reader holds it, and the inbox goes on.
#[test]
fn a_hostile_giant_row_rejects_the_file_and_the_inbox_goes_on() {
    let inbox = tempfile::tempdir().expect("inbox dir");
    let server = Server::start(&inbox_config(inbox.path(), ""));
    let mut hostile = b"sku,location,type,qty,reason\n".to_vec();
    hostile.extend(std::iter::repeat_n(b',', 1 << 20));
    hostile.push(b'\n');
    drop_file(inbox.path(), "giant.csv", &hostile);
    let rejected = inbox.path().join("rejected").join("giant.csv.result.json");
    wait_for(&rejected, Duration::from_secs(30));
    let result = read_json(&rejected);
    assert_eq!(result["code"], "row_too_large", "{result}");
    drop_file(
        inbox.path(),
        "after.csv",
        b"sku,location,type,qty,reason\nafter-1,3pl-north,receipt,3,\n",
    );
    wait_for(
        &inbox.path().join("processed").join("after.csv.result.json"),
        Duration::from_secs(30),
    );
    assert_eq!(on_hand(&server, "after-1", "3pl-north"), Some(3));
}

/// Source authority is the engine's check, so inbox rows meet it like events
/// over HTTP: refused rows are rejected with their code, the rest applied.
#[test]
fn rows_from_a_source_without_authority_are_rejected() {
    let inbox = tempfile::tempdir().expect("inbox dir");
    let rules = "[[source_authority]]\nsource = \"3pl-north\"\ntypes = [\"count\"]\n\
                 [[source_authority]]\nsource = \"wms\"\n";
    let server = Server::start(&format!("{}\n{rules}", inbox_config(inbox.path(), "")));
    drop_file(
        inbox.path(),
        "auth.csv",
        b"sku,location,type,qty,reason\nau-1,3pl-north,count,6,\nau-2,3pl-north,receipt,4,\n",
    );
    wait_for(
        &inbox.path().join("processed").join("auth.csv.result.json"),
        Duration::from_secs(30),
    );
    let result = processed(inbox.path(), "auth.csv");
    assert_eq!(result["applied"], 1, "{result}");
    assert_eq!(result["rejected"], 1, "{result}");
    assert_eq!(on_hand(&server, "au-1", "3pl-north"), Some(6));
    assert_eq!(on_hand(&server, "au-2", "3pl-north"), None);
    let rejected = fs::read_to_string(inbox.path().join("rejected").join("auth.csv")).unwrap();
    assert!(rejected.contains("source_not_authoritative"), "{rejected}");
}

/// Quoted line breaks keep every physical line short; the record is still
/// bounded.
#[test]
fn a_giant_quoted_record_rejects_the_file() {
    let inbox = tempfile::tempdir().expect("inbox dir");
    let _server = Server::start(&inbox_config(inbox.path(), ""));
    let mut hostile = b"sku,location,type,qty,reason\nq-1,3pl-north,receipt,1,\"".to_vec();
    for _ in 0..20_000 {
        hostile.extend_from_slice(b"short line\n");
    }
    hostile.extend_from_slice(b"\"\n");
    drop_file(inbox.path(), "quoted.csv", &hostile);
    let rejected = inbox.path().join("rejected").join("quoted.csv.result.json");
    wait_for(&rejected, Duration::from_secs(30));
    assert_eq!(read_json(&rejected)["code"], "row_too_large");
}

/// CPU seconds (user + system) the process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat has a command name")
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// An idle server watching an inbox sleeps: its own directory scans must not
/// wake the watcher (inotify reports them as access events), which once kept
/// a core busy rescanning.
#[test]
fn an_idle_inbox_does_not_spin() {
    let inbox = tempfile::tempdir().expect("inbox dir");
    let server = Server::start(&inbox_config(inbox.path(), ""));
    let pid = server.child.as_ref().expect("running").id();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(pid) - before;
    // A spinning watcher used a whole core (about 3 s here); idle is ~0.
    assert!(used < 1.0, "idle server used {used:.2} s of CPU in 3 s");
}
