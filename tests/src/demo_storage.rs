//! The storage half of the demo: a controller and two simulated nodes of the
//! built `moat-csi` over one pool, volumes provisioned through the socket and
//! each access-mode rule, and the cross-project refusal, shown holding on
//! real mounts.

use std::io::Write;

use anyhow::{ensure, Result};
use moat_csi_proto as csi;

use crate::csi::{mount_cap, write_in, Cluster, Mode, MIB};

struct Row {
    rule: &'static str,
    attempt: String,
    expected: &'static str,
    got: String,
}

fn outcome<T>(r: &std::result::Result<T, tonic::Status>) -> String {
    match r {
        Ok(_) => "OK".into(),
        Err(s) => screaming(&format!("{:?}", s.code())),
    }
}

/// `FailedPrecondition` → `FAILED_PRECONDITION`, as the spec writes codes.
fn screaming(camel: &str) -> String {
    let mut out = String::new();
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

fn write_outcome(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "written".into(),
        Err(e) if e.raw_os_error() == Some(30) => "EROFS".into(),
        Err(e) => e.to_string(),
    }
}

fn id_of(r: &std::result::Result<String, tonic::Status>) -> String {
    r.as_ref().cloned().unwrap_or_default()
}

pub fn run_storage_demo(out: &mut dyn Write) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = rt.block_on(scenario())?;
    writeln!(
        out,
        "== Storage: `moat-csi` controller + nodes node-1, node-2 over one pool, real mounts ==\n"
    )?;
    let w = rows
        .iter()
        .map(|r| r.attempt.chars().count())
        .max()
        .unwrap_or(10);
    writeln!(
        out,
        "{:<34} {:<w$}  {:<20} {:<20}",
        "RULE", "ATTEMPT", "EXPECTED", "GOT"
    )?;
    let mut wrong = 0;
    for r in &rows {
        let ok = r.got == r.expected;
        wrong += usize::from(!ok);
        let mark = if ok { "✓" } else { "✗" };
        writeln!(
            out,
            "{:<34} {:<w$}  {:<20} {:<20} {mark}",
            r.rule, r.attempt, r.expected, r.got
        )?;
    }
    writeln!(
        out,
        "\n{} checks, {} held, {wrong} broken",
        rows.len(),
        rows.len() - wrong
    )?;
    ensure!(wrong == 0, "{wrong} access-mode rules did not hold");
    Ok(())
}

async fn create(c: &Cluster, name: &str, mode: Mode) -> Result<String> {
    Ok(c.create(
        name,
        64 * MIB,
        mount_cap(
            mode,
            if mode == Mode::MultiNodeMultiWriter {
                ""
            } else {
                "ext4"
            },
        ),
        "shop",
    )
    .await)
}

async fn scenario() -> Result<Vec<Row>> {
    let c = Cluster::new(&["node-1", "node-2"]);
    let mut rows = Vec::new();
    let mut row = |rule, attempt: &str, expected, got: String| {
        rows.push(Row {
            rule,
            attempt: attempt.into(),
            expected,
            got,
        })
    };

    let rwo = mount_cap(Mode::SingleNodeWriter, "ext4");
    let data = create(&c, "shop-data", Mode::SingleNodeWriter).await?;
    let t = c
        .attach(0, &data, rwo.clone(), false, "shop", "shop-app")
        .await;
    row(
        "RWO: one node writes",
        "shop pod on node-1 publishes",
        "OK",
        outcome(&t),
    );
    row(
        "RWO: one node writes",
        "write a file",
        "written",
        write_outcome(write_in(&id_of(&t), "orders", "1")),
    );
    let second = c
        .attach(1, &data, rwo.clone(), false, "shop", "shop-app-2")
        .await;
    row(
        "RWO: one node at a time",
        "publish to node-2 too",
        "FAILED_PRECONDITION",
        outcome(&second),
    );
    let ro = c
        .node_attach(0, &data, rwo.clone(), true, "shop", "shop-ro")
        .await;
    row(
        "readonly publish",
        "write through a readonly publish",
        "EROFS",
        write_outcome(write_in(&id_of(&ro), "x", "y")),
    );
    let foreign = c
        .node_attach(0, &data, rwo, false, "blog", "blog-app")
        .await;
    row(
        "volumes belong to their project",
        "blog pod mounts shop's volume",
        "PERMISSION_DENIED",
        outcome(&foreign),
    );

    let rwop = mount_cap(Mode::SingleNodeSingleWriter, "ext4");
    let one = create(&c, "shop-db", Mode::SingleNodeSingleWriter).await?;
    let first = c.attach(0, &one, rwop.clone(), false, "shop", "db-1").await;
    row(
        "RWOP: one publication at all",
        "first pod publishes",
        "OK",
        outcome(&first),
    );
    let again = c.attach(0, &one, rwop, false, "shop", "db-2").await;
    row(
        "RWOP: one publication at all",
        "second pod, same node",
        "FAILED_PRECONDITION",
        outcome(&again),
    );

    let rox = mount_cap(Mode::MultiNodeReaderOnly, "ext4");
    let assets = create(&c, "shop-assets", Mode::MultiNodeReaderOnly).await?;
    for (i, node) in [(0, "node-1"), (1, "node-2")] {
        let t = c
            .attach(i, &assets, rox.clone(), false, "shop", &format!("web-{i}"))
            .await;
        row(
            "ROX: many nodes, read-only",
            &format!("publish on {node} asking read-write"),
            "OK",
            outcome(&t),
        );
        row(
            "ROX: many nodes, read-only",
            &format!("write on {node}"),
            "EROFS",
            write_outcome(write_in(&id_of(&t), "x", "y")),
        );
    }

    let rwx = mount_cap(Mode::MultiNodeMultiWriter, "");
    let shared = create(&c, "shop-shared", Mode::MultiNodeMultiWriter).await?;
    let a = c
        .attach(0, &shared, rwx.clone(), false, "shop", "worker-1")
        .await;
    let b = c.attach(1, &shared, rwx, false, "shop", "worker-2").await;
    row(
        "RWX: many nodes, many writers",
        "write on node-1",
        "written",
        write_outcome(write_in(&id_of(&a), "n1", "hi")),
    );
    row(
        "RWX: many nodes, many writers",
        "write on node-2",
        "written",
        write_outcome(write_in(&id_of(&b), "n2", "hi")),
    );
    let seen = std::fs::read_to_string(format!("{}/n1", id_of(&b)))
        .map(|_| "seen")
        .unwrap_or("missing");
    row(
        "RWX: many nodes, many writers",
        "node-2 reads node-1's file",
        "seen",
        seen.into(),
    );
    let list = c
        .ctrl()
        .await
        .list_volumes(csi::ListVolumesRequest::default())
        .await?
        .into_inner();
    let published: usize = list
        .entries
        .iter()
        .filter_map(|e| e.status.as_ref())
        .map(|s| s.published_node_ids.len())
        .sum();
    row(
        "ListVolumes knows publications",
        "published (volume, node) pairs",
        "6",
        published.to_string(),
    );
    Ok(rows)
}
