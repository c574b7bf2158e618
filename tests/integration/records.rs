//! Systems of record over real HTTP: reconciliation (JSON, and a 1,000,000-row
//! CSV through the `stockwire reconcile` CLI within a memory budget), source
//! authority, and the exception queue's retry and resolve.

use std::io::{BufWriter, Write};
use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};

use crate::harness::{metric, position, Server, BASE_CONFIG};

/// The ERP is authoritative for on-hand at wh-east only; the WMS may post anything.
const AUTHORITY: &str = r#"
[[source_authority]]
source = "erp"
locations = ["wh-east"]
types = ["adjustment", "count"]

[[source_authority]]
source = "wms"
"#;

fn on_hand(server: &Server, sku: &str, location: &str) -> i64 {
    position(server, sku, location)["on_hand"]
        .as_i64()
        .unwrap_or(0)
}

#[test]
fn a_reconciliation_reports_each_difference_and_corrects_only_where_the_source_is_authoritative() {
    let server = Server::start(AUTHORITY);
    server.receive("rc-1", "wh-east", 10);
    server.receive("rc-2", "wh-east", 5);
    server.receive("rc-1", "wh-west", 7);
    let snapshot = |apply: bool| {
        json!({"source": "erp", "apply": apply, "positions": [
            {"sku": "rc-1", "location": "wh-east", "on_hand": 10},
            {"sku": "rc-2", "location": "wh-east", "on_hand": 8},
            {"sku": "rc-1", "location": "wh-west", "on_hand": 5},
            {"sku": "rc-3", "location": "wh-east", "on_hand": 0},
            {"sku": "rc-4", "location": "nowhere", "on_hand": 1},
            {"sku": "rc-6", "location": "wh-east", "on_hand": -1}
        ]})
    };
    // A report only: nothing changes.
    let (status, report) = server.post("/v1/reconciliations", snapshot(false));
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["checked"], 4, "{report}");
    assert_eq!(report["matched"], 2, "{report}");
    assert_eq!(report["differences"], 2, "{report}");
    assert_eq!(report["rejected_rows"], 2, "{report}");
    let mut codes: Vec<&str> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    codes.sort_unstable();
    assert_eq!(
        codes,
        ["quantity_out_of_range", "unknown_location"],
        "{report}"
    );
    let mut found: Vec<(String, String, i64, i64, i64)> = report["exceptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["sku"].as_str().unwrap().to_string(),
                e["location"].as_str().unwrap().to_string(),
                e["engine_on_hand"].as_i64().unwrap(),
                e["source_on_hand"].as_i64().unwrap(),
                e["diff"].as_i64().unwrap(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("rc-1".into(), "wh-west".into(), 7, 5, -2),
            ("rc-2".into(), "wh-east".into(), 5, 8, 3)
        ]
    );
    assert_eq!(on_hand(&server, "rc-2", "wh-east"), 5);

    // Applied: the ERP corrects wh-east, not wh-west.
    let (status, report) = server.post("/v1/reconciliations", snapshot(true));
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["applied"], 1, "{report}");
    let by_location = |location: &str| {
        report["exceptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["location"] == location)
            .cloned()
            .unwrap()
    };
    let east = by_location("wh-east");
    assert_eq!(east["applied"], true, "{east}");
    let seq = east["seq"].as_u64().expect("the correction's seq");
    let west = by_location("wh-west");
    assert_eq!(west["applied"], false, "{west}");
    assert_eq!(west["code"], "source_not_authoritative", "{west}");
    assert_eq!(on_hand(&server, "rc-2", "wh-east"), 8);
    assert_eq!(on_hand(&server, "rc-1", "wh-west"), 7);
    // The correction is an ordinary adjustment in the log.
    let (_, log) = server.get(&format!("/v1/events?after={}&limit=1", seq - 1));
    let entry = &log["events"][0];
    assert_eq!(entry["type"], "inventory.adjusted", "{entry}");
    assert_eq!(entry["reason"], "correction", "{entry}");
    assert_eq!(entry["delta"]["on_hand"], 3, "{entry}");
    assert_eq!(entry["source"], "erp", "{entry}");
    // Every difference is in the exception queue, once per position while it
    // lasts: the second run resolved the east one and did not queue the west
    // one again. All are counted.
    let (_, open) = server.get("/v1/exceptions?kind=reconciliation_difference&status=open");
    let open = open["exceptions"].as_array().unwrap().clone();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["location"], "wh-west", "{open:?}");
    let (_, resolved) = server.get("/v1/exceptions?kind=reconciliation_difference&status=resolved");
    let resolved = resolved["exceptions"].as_array().unwrap().clone();
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0]["sku"], "rc-2", "{resolved:?}");
    let note = resolved[0]["resolution"]["note"].as_str().unwrap_or("");
    assert!(
        note.starts_with("corrected by reconciliation"),
        "{resolved:?}"
    );
    assert_eq!(resolved[0]["resolution"]["seq"], seq, "{resolved:?}");
    assert_eq!(
        metric(
            &server,
            "stockwire_reconciliation_exceptions_total",
            &[("source", "erp")]
        )
        .unwrap_or(0.0),
        4.0
    );
    // A position the engine did not have yet is created by its correction.
    let (_, new) = server.post(
        "/v1/reconciliations",
        json!({"source": "erp", "apply": true,
               "positions": [{"sku": "rc-5", "location": "wh-east", "on_hand": 6}]}),
    );
    assert_eq!(new["applied"], 1, "{new}");
    assert_eq!(on_hand(&server, "rc-5", "wh-east"), 6);
    // Run again: the corrected position now matches.
    let (_, again) = server.post("/v1/reconciliations", snapshot(true));
    assert_eq!(again["differences"], 1, "{again}");
    assert_eq!(again["applied"], 0, "{again}");
    let (_, open) = server.get("/v1/exceptions?kind=reconciliation_difference&status=open");
    assert_eq!(open["exceptions"].as_array().unwrap().len(), 1, "{open}");
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Memory budget for streaming a reconciliation: the server's peak RSS may grow
/// by at most this much (16 MiB) while it compares a 1,000,000-row (about 17 MB) CSV.
/// Holding the upload, or its rows, would take well over this.
const RECONCILE_RSS_BUDGET_KIB: u64 = 16 * 1024;

#[test]
fn a_million_row_csv_is_streamed_within_a_memory_budget_and_reports_exactly_the_seeded_differences()
{
    let extra = format!(
        "{AUTHORITY}\n[[keys]]\nname = \"erp-sync\"\nkey = \"erp-secret\"\nrole = \"system\"\n\
         locations = [\"wh-east\", \"wh-west\"]\nrate_limit = {{ per_second = 100000, burst = 100000 }}\n\
         [[keys]]\nname = \"admin\"\nkey = \"admin-secret\"\nrole = \"admin\"\n\
         rate_limit = {{ per_second = 100000, burst = 100000 }}\n"
    );
    let server = Server::start_with_base(BASE_CONFIG, &extra).with_token("admin-secret");
    // 200 positions in the engine; the snapshot agrees on all but 12.
    let seeded = 200;
    let events: Vec<Value> = (0..seeded)
        .map(|i| {
            json!({"event_id": format!("seed-{i}"), "type": "receipt", "source": "wms",
                   "sku": format!("m-{i}"), "location": "wh-east", "qty": 10 + i})
        })
        .collect();
    let (status, body) = server.post("/v1/events", json!({ "events": events }));
    assert_eq!(status, 200, "{body}");
    let differ: Vec<u64> = (0..12).map(|k| k * 17).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("snapshot.csv");
    let rows: u64 = 1_000_000;
    {
        let mut file = BufWriter::new(std::fs::File::create(&path).expect("csv"));
        // Spreadsheet exports start with a byte order mark.
        writeln!(file, "\u{feff}sku,location,on_hand").unwrap();
        for row in 0..rows {
            // SKU m-i at wh-east and wh-west, two rows per SKU.
            let (i, location) = (row / 2, if row % 2 == 0 { "wh-east" } else { "wh-west" });
            let on_hand = if location == "wh-east" && i < seeded {
                if differ.contains(&i) {
                    10 + i + 1000
                } else {
                    10 + i
                }
            } else {
                0
            };
            writeln!(file, "m-{i},{location},{on_hand}").unwrap();
        }
    }
    let pid = server.child.as_ref().expect("running").id();
    let before = vm_hwm_kib(pid);
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_stockwire"))
        .args(["reconcile", "--source", "erp", "--file"])
        .arg(&path)
        .args(["--url", &server.url(""), "--key", "erp-secret"])
        .output()
        .expect("run stockwire reconcile");
    let elapsed = started.elapsed();
    let after = vm_hwm_kib(pid);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Differences remain (no --apply): exit code 2.
    assert_eq!(
        output.status.code(),
        Some(2),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["checked"], rows, "{report}");
    assert_eq!(report["matched"], rows - differ.len() as u64);
    assert_eq!(report["differences"], differ.len() as u64);
    let mut skus: Vec<String> = report["exceptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["diff"], 1000, "{e}");
            e["sku"].as_str().unwrap().to_string()
        })
        .collect();
    skus.sort();
    let mut expected: Vec<String> = differ.iter().map(|i| format!("m-{i}")).collect();
    expected.sort();
    assert_eq!(skus, expected);
    let growth = after.saturating_sub(before);
    eprintln!(
        "reconcile: {rows} rows in {:.1} s; server peak RSS {before} KiB -> {after} KiB (+{growth} KiB, budget {RECONCILE_RSS_BUDGET_KIB} KiB)",
        elapsed.as_secs_f64()
    );
    assert!(
        growth <= RECONCILE_RSS_BUDGET_KIB,
        "peak RSS grew by {growth} KiB (budget {RECONCILE_RSS_BUDGET_KIB} KiB)"
    );
}

#[test]
fn events_from_a_source_without_authority_are_rejected_into_the_exception_queue() {
    let rules = r#"
[[source_authority]]
source = "wms"
locations = ["wh-east"]
types = ["receipt", "adjustment"]
"#;
    let server = Server::start(rules);
    let post = |event: Value| {
        let (status, body) = server.post("/v1/events", json!({ "events": [event] }));
        assert_eq!(status, 200, "{body}");
        body["results"][0].clone()
    };
    let ok = post(
        json!({"event_id": "sa-1", "type": "receipt", "source": "wms",
                         "sku": "sa", "location": "wh-east", "qty": 5}),
    );
    assert_eq!(ok["status"], "applied", "{ok}");
    for (id, source, kind, location) in [
        ("sa-2", "wms", "count", "wh-east"),
        ("sa-3", "wms", "receipt", "wh-west"),
        ("sa-4", "erp", "receipt", "wh-east"),
    ] {
        let mut event = json!({"event_id": id, "type": kind, "source": source,
                               "sku": "sa", "location": location});
        if kind == "count" {
            event["counted"] = json!(1);
        } else {
            event["qty"] = json!(1);
        }
        let result = post(event);
        assert_eq!(result["status"], "rejected", "{result}");
        assert_eq!(result["code"], "source_not_authoritative", "{result}");
    }
    assert_eq!(on_hand(&server, "sa", "wh-east"), 5);
    let (_, queue) = server.get("/v1/exceptions?kind=rejected_event");
    let codes: Vec<&str> = queue["exceptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["source_not_authoritative"; 3], "{queue}");
}

#[test]
fn an_exception_can_be_retried_with_the_corrected_event_or_resolved_with_a_note() {
    let server = Server::start("");
    let post = |event: Value| {
        let (status, body) = server.post("/v1/events", json!({ "events": [event] }));
        assert_eq!(status, 200, "{body}");
        body["results"][0].clone()
    };
    let bad = post(
        json!({"event_id": "ex-1", "type": "receipt", "source": "wms",
                          "sku": "ex", "location": "wh-nowhere", "qty": 4}),
    );
    assert_eq!(bad["code"], "unknown_location", "{bad}");
    let other = post(
        json!({"event_id": "ex-2", "type": "adjustment", "source": "wms",
                            "sku": "ex", "location": "wh-east", "delta": -3, "reason": "damage"}),
    );
    assert_eq!(other["status"], "rejected", "{other}");
    let (_, open) = server.get("/v1/exceptions?status=open");
    let id_of = |event_id: &str| {
        open["exceptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == event_id)
            .and_then(|e| e["id"].as_u64())
            .expect("queued")
    };
    let (first, second) = (id_of("ex-1"), id_of("ex-2"));

    // Re-submitting the original unchanged fails again: the exception stays open.
    let (status, answer) = server.post(&format!("/v1/exceptions/{first}/retry"), json!({}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["status"], "rejected", "{answer}");
    assert_eq!(answer["exception"]["status"], "open", "{answer}");
    // A retry under an event id already applied with other content applies
    // nothing, so it does not close the exception either.
    let seed = post(
        json!({"event_id": "ex-seed", "type": "receipt", "source": "wms",
                          "sku": "ex-other", "location": "wh-east", "qty": 1}),
    );
    assert_eq!(seed["status"], "applied", "{seed}");
    let reused = json!({"event": {"event_id": "ex-seed", "type": "receipt", "source": "wms",
                                  "sku": "ex-other", "location": "wh-east", "qty": 55}});
    let (status, answer) = server.post(&format!("/v1/exceptions/{first}/retry"), reused);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["status"], "rejected", "{answer}");
    assert_eq!(answer["result"]["code"], "invalid_state", "{answer}");
    assert_eq!(answer["exception"]["status"], "open", "{answer}");
    // The corrected event is applied and closes it.
    let corrected = json!({"event": {"event_id": "ex-1-fixed", "type": "receipt", "source": "wms",
                                     "sku": "ex", "location": "wh-east", "qty": 4}});
    let (status, answer) = server.post(&format!("/v1/exceptions/{first}/retry"), corrected.clone());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["status"], "applied", "{answer}");
    assert_eq!(answer["exception"]["status"], "resolved", "{answer}");
    assert_eq!(
        answer["exception"]["resolution"]["retried_event_id"],
        "ex-1-fixed"
    );
    assert!(
        answer["exception"]["resolution"]["seq"].is_u64(),
        "{answer}"
    );
    assert_eq!(on_hand(&server, "ex", "wh-east"), 4);
    // A resolved exception is not retried again.
    let (status, answer) = server.post(&format!("/v1/exceptions/{first}/retry"), corrected);
    assert_eq!(status, 409, "{answer}");
    assert_eq!(on_hand(&server, "ex", "wh-east"), 4);

    // The other is closed with a note.
    let (status, answer) = server.post(&format!("/v1/exceptions/{second}/resolve"), json!({}));
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = server.post(
        &format!("/v1/exceptions/{second}/resolve"),
        json!({"note": "damage was booked twice; counted on the floor"}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "resolved", "{answer}");
    assert_eq!(
        answer["resolution"]["note"],
        "damage was booked twice; counted on the floor"
    );
    let (status, one) = server.get(&format!("/v1/exceptions/{second}"));
    assert_eq!(status, 200);
    assert_eq!(one["resolution"]["by"], "-", "{one}");
    let (_, still_open) = server.get("/v1/exceptions?status=open");
    assert!(
        still_open["exceptions"].as_array().unwrap().is_empty(),
        "{still_open}"
    );
    let (status, _) = server.get("/v1/exceptions/999999");
    assert_eq!(status, 404);
    // Resolutions survive a restart.
    let mut server = server;
    server.kill();
    server.spawn();
    let (_, one) = server.get(&format!("/v1/exceptions/{second}"));
    assert_eq!(one["status"], "resolved", "{one}");
    assert_eq!(
        one["resolution"]["note"],
        "damage was booked twice; counted on the floor"
    );
}

#[test]
fn a_csv_snapshot_may_quote_line_breaks_in_other_columns_and_use_crlf() {
    let server = Server::start(AUTHORITY);
    server.receive("q-1", "wh-east", 4);
    server.receive("q-2", "wh-east", 9);
    let upload = |body: &[u8]| {
        let request = ureq::post(&server.url("/v1/reconciliations?source=erp&apply=true"))
            .set("content-type", "text/csv");
        match request.send_bytes(body) {
            Ok(response) => (response.status(), response.into_json::<Value>().unwrap()),
            Err(ureq::Error::Status(status, response)) => {
                (status, response.into_json::<Value>().unwrap())
            }
            Err(error) => panic!("{error}"),
        }
    };
    let csv = "description,sku,on_hand,location\r\n\
               \"blue mug,\r\nlarge\",q-1,4,wh-east\r\n\
               \"red mug\nsmall \"\"seconds\"\"\",q-2,7,wh-east\r\n";
    let (status, report) = upload(csv.as_bytes());
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["checked"], 2, "{report}");
    assert_eq!(report["matched"], 1, "{report}");
    assert_eq!(report["applied"], 1, "{report}");
    assert_eq!(report["exceptions"][0]["sku"], "q-2", "{report}");
    assert_eq!(on_hand(&server, "q-2", "wh-east"), 7);
    // A record past the buffer is refused with a clear error, and nothing hangs.
    let mut huge = b"sku,location,on_hand\n\"".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 100_000));
    huge.extend_from_slice(b"\",wh-east,1\n");
    let (status, problem) = upload(&huge);
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["code"], "bad_request", "{problem}");
    let (status, problem) = upload(b"");
    assert_eq!(status, 400, "{problem}");
}
