//! One test's environment: a broker, optionally Redis, a scratch directory; its topics and
//! `trident node` processes.

use std::process::{Command, Stdio};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use super::servers::{servers, wait_port, Broker, Proc, Redis};
use crate::common::{free_port, tiny, TRIDENT};

/// A broker, optionally Redis, a scratch directory: everything one test needs.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub broker: Broker,
    pub redis: Option<Redis>,
}

impl Env {
    pub fn start(with_redis: bool) -> Option<Env> {
        Self::start_with_schemas(with_redis, &[])
    }

    /// A broker whose embedded schema registry validates the named topics: `(topic, JSON
    /// schema)`; a record that does not conform is refused with INVALID_RECORD.
    pub fn start_with_schemas(with_redis: bool, schemas: &[(&str, &str)]) -> Option<Env> {
        let (tansu, redis_bin) = servers()?;
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Vec::new();
        if !schemas.is_empty() {
            let sdir = dir.path().join("schemas");
            std::fs::create_dir_all(&sdir).unwrap();
            for (topic, schema) in schemas {
                std::fs::write(sdir.join(format!("{topic}.json")), schema).unwrap();
            }
            // tansu resolves the path against its working directory (set below).
            registry = vec!["--schema-registry".to_string(), "file://./schemas".to_string()];
        }
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = dir.path().join("tansu.log");
        let child = Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{addr}"),
                "--advertised-listener-url",
                &format!("tcp://{addr}"),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .args(&registry)
            .current_dir(dir.path())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
            .spawn()
            .expect("start tansu");
        wait_port(port, "tansu");
        let broker = Broker { proc: Proc { child, name: "tansu".into(), log }, addr };
        let redis = with_redis.then(|| Redis::start(&redis_bin, dir.path(), free_port()));
        Some(Env { dir, broker, redis })
    }

    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.broker.addr);
        c
    }

    pub fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let new: Vec<NewTopic> =
            topics.iter().map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1))).collect();
        let res =
            rt.block_on(admin.create_topics(&new, &AdminOptions::new())).expect("create topics");
        for r in res {
            r.expect("topic created");
        }
    }

    /// Start `trident node` with the common flags plus `extra`; env vars in `envs`.
    pub fn node(
        &self,
        name: &str,
        group: &str,
        topics: &Topics,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Proc {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut cmd = Command::new(TRIDENT);
        cmd.arg("node")
            .arg("--model")
            .arg(tiny())
            .args(["--brokers", &self.broker.addr, "--group", group])
            .args([
                "--input-topic",
                &topics.input,
                "--output-topic",
                &topics.output,
                "--dlq-topic",
                &topics.dlq,
            ])
            .args(extra)
            .env("TRIDENT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Proc { child: cmd.spawn().expect("start trident node"), name: name.into(), log }
    }
}

pub struct Topics {
    pub input: String,
    pub output: String,
    pub dlq: String,
}

impl Topics {
    pub fn new(env: &Env, prefix: &str, partitions: i32) -> Topics {
        let t = Topics {
            input: format!("{prefix}-in"),
            output: format!("{prefix}-out"),
            dlq: format!("{prefix}-dlq"),
        };
        env.create_topics(&[(&t.input, partitions), (&t.output, 1), (&t.dlq, 1)]);
        t
    }
}
