-- Config releases (pipeline/releases.py): every `rassylka config publish` or `rollback`,
-- from the compacted config.rules topic, so analysts can join results to the config that
-- produced them: messages.config_version is the release the sender decided with
-- ('v12@3f9a2c1b': number and content hash; 'files@<hash>' when it read config/ from
-- disk; '' from senders before releases).
CREATE TABLE IF NOT EXISTS {db}.config_releases
(
    version       String,                  -- v1, v2, ...
    number        UInt32,
    stamp         String,                  -- what messages.config_version holds
    content_hash  String,                  -- sha256 of every file's path and text
    author        String,
    message       String,
    previous      String,                  -- the release it follows ('' for the first)
    rollback_of   String,                  -- the release whose files it restores, or ''
    added         Array(String),           -- files, against the release before
    removed       Array(String),
    changed       Array(String),
    files         Map(String, String),     -- path -> text
    published_at  DateTime64(3, 'UTC'),
    activate_at   DateTime64(3, 'UTC')     -- when every worker switched to it
)
ENGINE = ReplacingMergeTree
ORDER BY number
SETTINGS non_replicated_deduplication_window = 10000;

ALTER TABLE {db}.messages ADD COLUMN IF NOT EXISTS config_version LowCardinality(String) DEFAULT '' AFTER decided_at;
