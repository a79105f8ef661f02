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

/// The checks in the order the demo prints them.
#[derive(Default)]
struct Rows(Vec<Row>);

impl Rows {
    fn add(&mut self, rule: &'static str, attempt: &str, expected: &'static str, got: String) {
        self.0.push(Row {
            rule,
            attempt: attempt.into(),
            expected,
            got,
        });
    }
}

async fn scenario() -> Result<Vec<Row>> {
    let c = Cluster::new(&["node-1", "node-2"]);
    let mut rows = Rows::default();
    single_writer(&c, &mut rows).await?;
    single_pod(&c, &mut rows).await?;
    read_only_many(&c, &mut rows).await?;
    read_write_many(&c, &mut rows).await?;
    publications_listed(&c, &mut rows).await?;
    Ok(rows.0)
}

/// ReadWriteOnce, a readonly publish of it, and another project's pod.
async fn single_writer(c: &Cluster, rows: &mut Rows) -> Result<()> {
    let rwo = mount_cap(Mode::SingleNodeWriter, "ext4");
    let data = create(c, "shop-data", Mode::SingleNodeWriter).await?;
    let t = c
        .attach(0, &data, rwo.clone(), false, "shop", "shop-app")
        .await;
    rows.add(
        "RWO: one node writes",
        "shop pod on node-1 publishes",
        "OK",
        outcome(&t),
    );
    rows.add(
        "RWO: one node writes",
        "write a file",
        "written",
        write_outcome(write_in(&id_of(&t), "orders", "1")),
    );
    let second = c
        .attach(1, &data, rwo.clone(), false, "shop", "shop-app-2")
        .await;
    rows.add(
        "RWO: one node at a time",
        "publish to node-2 too",
        "FAILED_PRECONDITION",
        outcome(&second),
    );
    let ro = c
        .node_attach(0, &data, rwo.clone(), true, "shop", "shop-ro")
        .await;
    rows.add(
        "readonly publish",
        "write through a readonly publish",
        "EROFS",
        write_outcome(write_in(&id_of(&ro), "x", "y")),
    );
    let foreign = c
        .node_attach(0, &data, rwo, false, "blog", "blog-app")
        .await;
    rows.add(
        "volumes belong to their project",
        "blog pod mounts shop's volume",
        "PERMISSION_DENIED",
        outcome(&foreign),
    );
    Ok(())
}

async fn single_pod(c: &Cluster, rows: &mut Rows) -> Result<()> {
    let rwop = mount_cap(Mode::SingleNodeSingleWriter, "ext4");
    let one = create(c, "shop-db", Mode::SingleNodeSingleWriter).await?;
    let first = c.attach(0, &one, rwop.clone(), false, "shop", "db-1").await;
    rows.add(
        "RWOP: one publication at all",
        "first pod publishes",
        "OK",
        outcome(&first),
    );
    let again = c.attach(0, &one, rwop, false, "shop", "db-2").await;
    rows.add(
        "RWOP: one publication at all",
        "second pod, same node",
        "FAILED_PRECONDITION",
        outcome(&again),
    );
    Ok(())
}

async fn read_only_many(c: &Cluster, rows: &mut Rows) -> Result<()> {
    let rox = mount_cap(Mode::MultiNodeReaderOnly, "ext4");
    let assets = create(c, "shop-assets", Mode::MultiNodeReaderOnly).await?;
    for (i, node) in [(0, "node-1"), (1, "node-2")] {
        let t = c
            .attach(i, &assets, rox.clone(), false, "shop", &format!("web-{i}"))
            .await;
        rows.add(
            "ROX: many nodes, read-only",
            &format!("publish on {node} asking read-write"),
            "OK",
            outcome(&t),
        );
        rows.add(
            "ROX: many nodes, read-only",
            &format!("write on {node}"),
            "EROFS",
            write_outcome(write_in(&id_of(&t), "x", "y")),
        );
    }
    Ok(())
}

async fn read_write_many(c: &Cluster, rows: &mut Rows) -> Result<()> {
    let rwx = mount_cap(Mode::MultiNodeMultiWriter, "");
    let shared = create(c, "shop-shared", Mode::MultiNodeMultiWriter).await?;
    let a = c
        .attach(0, &shared, rwx.clone(), false, "shop", "worker-1")
        .await;
    let b = c.attach(1, &shared, rwx, false, "shop", "worker-2").await;
    rows.add(
        "RWX: many nodes, many writers",
        "write on node-1",
        "written",
        write_outcome(write_in(&id_of(&a), "n1", "hi")),
    );
    rows.add(
        "RWX: many nodes, many writers",
        "write on node-2",
        "written",
        write_outcome(write_in(&id_of(&b), "n2", "hi")),
    );
    let seen = std::fs::read_to_string(format!("{}/n1", id_of(&b)))
        .map(|_| "seen")
        .unwrap_or("missing");
    rows.add(
        "RWX: many nodes, many writers",
        "node-2 reads node-1's file",
        "seen",
        seen.into(),
    );
    Ok(())
}

/// Every publication the steps above left standing, as ListVolumes reports it.
async fn publications_listed(c: &Cluster, rows: &mut Rows) -> Result<()> {
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
    rows.add(
        "ListVolumes knows publications",
        "published (volume, node) pairs",
        "6",
        published.to_string(),
    );
    Ok(())
}
