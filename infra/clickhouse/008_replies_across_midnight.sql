-- The replies view of 007 put a long reply's segments together within a UTC day, so a
-- reply whose segments straddled midnight showed as two incomplete rows. Segments now
-- belong together by sender, recipient, reference and count as long as no more than an
-- hour passes from one to the next (a long reply's segments come within seconds; a
-- handset reuses a reference only after 256 (8-bit) long messages): the same reference
-- after an hour's silence starts another reply.
CREATE OR REPLACE VIEW {db}.replies AS
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
    FROM
    (
        SELECT *, sum(starts) OVER (PARTITION BY r_key ORDER BY received_at, inbound_id
                                    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS r_no
        FROM
        (
            SELECT *,
                toUInt8(row_number() OVER w = 1
                        OR dateDiff('second', lagInFrame(received_at) OVER w, received_at) > 3600)
                    AS starts
            FROM
            (
                SELECT *,
                    if(part_ref IS NULL, inbound_id,
                       concat(sender_hash, '|', to_number, '|', toString(part_ref), '|',
                              toString(segments))) AS r_key
                FROM {db}.inbound
            )
            WINDOW w AS (PARTITION BY r_key ORDER BY received_at, inbound_id
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        )
    )
    GROUP BY r_key, r_no
);
