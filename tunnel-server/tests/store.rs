//! One contract for every store backend, run against SQLite and against a real etcd (one
//! member on loopback, started here; `etcd` must be installed, as `scripts/test.sh` does):
//! versions and compare-and-set, ordered pages, all-or-nothing commits, watches, and
//! leases whose keys go with them.

use std::sync::Arc;
use std::time::Duration;

use tunnel_server::store::{Change, EtcdStore, Expect, SqliteStore, Store, StoreError, Watch};
use tunnel_testkit::{Etcd, WAIT, fresh_dir, within};

/// The next change under the watch, skipping "re-read" notices (etcd sends one when the
/// watch is established).
async fn next_change(watch: &mut Watch) -> Change {
    within("a change", WAIT, async {
        loop {
            match watch.next().await.expect("the store is alive") {
                Ok(c) => return c,
                Err(_lagged) => continue,
            }
        }
    })
    .await
}

async fn keeps_the_contract(store: Arc<dyn Store>) {
    // Versions and compare-and-set.
    let put = |k: &'static str, v: &'static [u8], e| {
        let store = store.clone();
        async move { store.put(k, v.to_vec(), e, None).await }
    };
    assert_eq!(put("a/1", b"x", Expect::Absent).await.unwrap(), 1);
    let stale = put("a/1", b"y", Expect::Absent).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    assert_eq!(put("a/1", b"y", Expect::Version(1)).await.unwrap(), 2);
    assert_eq!(put("a/1", b"z", Expect::Any).await.unwrap(), 3);
    assert!(put("a/1", b"w", Expect::Version(1)).await.is_err());
    let got = store.get("a/1").await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.version), (&b"z"[..], 3));
    assert!(store.delete("a/1", Expect::Version(2)).await.is_err());
    assert!(store.delete("a/1", Expect::Version(3)).await.unwrap());
    assert!(store.get("a/1").await.unwrap().is_none());
    assert!(!store.delete("a/1", Expect::Any).await.unwrap());
    // Ordered pages under one prefix.
    for k in ["d/b", "d/a", "d/c", "e/a", "c/z"] {
        store.put(k, vec![], Expect::Any, None).await.unwrap();
    }
    let keys = |page: Vec<(String, _)>| page.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list("d/", None, 2).await.unwrap()),
        ["d/a", "d/b"]
    );
    assert_eq!(
        keys(store.list("d/", Some("d/b"), 2).await.unwrap()),
        ["d/c"]
    );
    assert!(store.list("d/", Some("d/c"), 2).await.unwrap().is_empty());
    // A commit is all or nothing.
    let conflict = store
        .commit(vec![
            ("k/2".into(), vec![2], Expect::Absent),
            ("d/a".into(), vec![9], Expect::Absent),
        ])
        .await;
    assert!(matches!(conflict, Err(StoreError::Conflict { .. })));
    assert!(
        store.get("k/2").await.unwrap().is_none(),
        "nothing of a failed commit"
    );
    store
        .commit(vec![
            ("k/2".into(), vec![2], Expect::Absent),
            ("d/a".into(), vec![9], Expect::Version(1)),
        ])
        .await
        .unwrap();
    assert_eq!(store.get("d/a").await.unwrap().unwrap().value, vec![9]);
    assert_eq!(store.get("k/2").await.unwrap().unwrap().version, 1);
    // Watch: changes under the prefix only, in order; an unkept lease takes its key.
    let mut watch = store.watch("p/");
    let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    // etcd tells the watcher to re-read once it is established: wait for that first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.put("q/1", vec![1], Expect::Any, None).await.unwrap();
    store
        .put("p/1", vec![2], Expect::Any, Some(lease))
        .await
        .unwrap();
    let c = next_change(&mut watch).await;
    assert_eq!((c.key.as_str(), c.value), ("p/1", Some(vec![2])));
    let gone = next_change(&mut watch).await;
    assert_eq!((gone.key.as_str(), gone.value), ("p/1", None));
    assert!(store.get("p/1").await.unwrap().is_none());
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::NoLease(_))
    ));
    // A kept lease keeps its key; a revoked one takes it at once.
    let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    store
        .put("p/2", vec![3], Expect::Any, Some(lease))
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        store.keep_alive(lease).await.unwrap();
    }
    assert!(
        store.get("p/2").await.unwrap().is_some(),
        "kept alive past its TTL"
    );
    let written = next_change(&mut watch).await;
    assert_eq!(
        (written.key.as_str(), written.value),
        ("p/2", Some(vec![3]))
    );
    store.revoke_lease(lease).await.unwrap();
    // At once: no keep-alive has been missed yet.
    assert!(
        store.get("p/2").await.unwrap().is_none(),
        "revoked with its key"
    );
    let gone = next_change(&mut watch).await;
    assert_eq!((gone.key.as_str(), gone.value), ("p/2", None));
}

#[tokio::test]
async fn sqlite_keeps_the_stores_contract() {
    let dir = fresh_dir("store-contract");
    keeps_the_contract(Arc::new(SqliteStore::open(dir.join("state.db")).unwrap())).await;
}

#[tokio::test]
async fn etcd_keeps_the_stores_contract_within_its_namespace() {
    let etcd = Etcd::start("contract").await;
    let url = std::slice::from_ref(&etcd.url);
    let store = Arc::new(EtcdStore::connect(url, "contract/").await.unwrap());
    // Another namespace on the same etcd is invisible to it.
    let other = EtcdStore::connect(url, "other/").await.unwrap();
    other.put("d/0", vec![], Expect::Any, None).await.unwrap();
    keeps_the_contract(store.clone()).await;
    let page = store.list("d/", None, 10).await.unwrap();
    assert!(page.iter().all(|(k, _)| k != "d/0"), "{page:?}");
    assert_eq!(other.list("", None, 10).await.unwrap().len(), 1);
}
