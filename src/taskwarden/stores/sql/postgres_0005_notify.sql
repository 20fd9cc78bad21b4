-- taskwarden PostgreSQL schema, version 5: wake-ups over NOTIFY, with no bus needed.
-- Whoever writes a launch for the fleet (scheduled, no lease owner) or a cancel request,
-- from any process, notifies the workers in the same transaction: {processes}_wake
-- (no payload, so a statement's many launches make one notification) and
-- {processes}_cancel (the process id).

CREATE OR REPLACE FUNCTION {processes}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'scheduled' AND NEW.lease_owner IS NULL THEN
        PERFORM pg_notify('{processes}_wake', '');
    ELSIF NEW.state = 'cancel_requested'
        AND (TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM 'cancel_requested') THEN
        PERFORM pg_notify('{processes}_cancel', NEW.process_id);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS {processes}_notify ON {processes};

CREATE TRIGGER {processes}_notify AFTER INSERT OR UPDATE OF state, lease_owner
    ON {processes} FOR EACH ROW EXECUTE FUNCTION {processes}_notify();
