-- Concatenated (long) replies: the SMSC delivers each segment as a message of its own, and
-- each is a row of inbound with its place (segment of segments) and the handset's
-- reference. Replies of one segment have part_ref NULL and segment = segments = 1.
ALTER TABLE {db}.inbound ADD COLUMN IF NOT EXISTS part_ref Nullable(UInt16) AFTER received_at;
ALTER TABLE {db}.inbound ADD COLUMN IF NOT EXISTS segment UInt8 DEFAULT 1 AFTER part_ref;
ALTER TABLE {db}.inbound ADD COLUMN IF NOT EXISTS segments UInt8 DEFAULT 1 AFTER segment;

-- Replies as the customers wrote them: the segments of a concatenated reply joined in
-- order, one row per reply (a reply of one segment is its row). complete = 0 while a
-- segment is missing. Segments belong together by sender, recipient, reference and count
-- within a UTC day: a handset reuses a reference after 256 (8-bit) long messages, so a
-- reply whose segments straddled midnight showed as two incomplete rows. Replaced by
-- 008_replies_across_midnight.sql (an hour's gap, not the day, starts another reply).
CREATE VIEW IF NOT EXISTS {db}.replies AS
SELECT
    r_id AS reply_id, r_sender_hash AS sender_hash, r_sender_masked AS sender_masked,
    r_to AS to_number, r_text AS text, r_segments AS segments, r_received AS segments_received,
    r_received = r_segments AS complete, r_gateway AS gateway, r_first AS received_at,
    r_last AS last_segment_at
FROM
(
    SELECT
        min(inbound_id) AS r_id,
        any(sender_hash) AS r_sender_hash,
        any(sender_masked) AS r_sender_masked,
        any(to_number) AS r_to,
        arrayStringConcat(arrayMap(p -> p.2, arraySort(groupUniqArray((segment, text))))) AS r_text,
        max(segments) AS r_segments,
        toUInt8(uniqExact(segment)) AS r_received,
        any(gateway) AS r_gateway,
        min(received_at) AS r_first,
        max(received_at) AS r_last
    FROM {db}.inbound
    GROUP BY if(part_ref IS NULL, inbound_id,
                concat(sender_hash, '|', to_number, '|', toString(part_ref), '|',
                       toString(segments), '|', toString(day)))
);
