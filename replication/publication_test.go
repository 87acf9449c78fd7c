package replication

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/migrations"
)

// partitioned makes event_outbox a partitioned table (as a user may) before
// `cdc migrate` adopts it.
const partitioned = `CREATE TABLE event_outbox (
    id BIGSERIAL, event_type VARCHAR(255) NOT NULL, event_date_time TIMESTAMP NOT NULL,
    environment VARCHAR(50) NOT NULL, event_context JSONB NOT NULL, metadata_version BIGINT NOT NULL,
    status VARCHAR(20) NOT NULL DEFAULT 'pending',
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);
CREATE TABLE event_outbox_all PARTITION OF event_outbox DEFAULT`

// Every way a publication can leave outbox rows out of the stream is refused
// with the object and the fix named; what `cdc migrate` makes passes, and
// where the error says "cdc migrate", running it fixes the problem.
func TestCheckPublication(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before string // SQL before `cdc migrate` (empty: none)
		after  string // SQL after it
		since  int    // server_version_num the case needs
		want   []string
		// migrateFixes: running `cdc migrate`, as the error says, makes the
		// publication pass.
		migrateFixes bool
	}{
		{name: "as migrate makes it"},
		{name: "partitioned, as migrate makes it", before: partitioned},
		// FOR ALL TABLES publishes cdc's own state tables too: the daemon's
		// writes to them would stop its stream.
		{name: "for all tables", after: `CREATE TABLE other (id int); DROP PUBLICATION cdc_outbox; CREATE PUBLICATION cdc_outbox FOR ALL TABLES WITH (publish = 'insert')`,
			want: []string{"is FOR ALL TABLES", "public.cdc_slot_state", "public.other", "postgres.publication"}},
		{name: "other tables too", after: `CREATE TABLE other (id int); CREATE TABLE "Odd" (id int); ALTER PUBLICATION cdc_outbox ADD TABLE other, "Odd"`,
			want: []string{`publishes public."Odd", public.other besides the outbox`, `ALTER PUBLICATION "cdc_outbox" DROP TABLE public."Odd", public.other`}},
		{name: "publication missing", after: `DROP PUBLICATION cdc_outbox`,
			want: []string{`publication "cdc_outbox" does not exist`, "cdc migrate", `CREATE PUBLICATION "cdc_outbox" FOR TABLE "public"."event_outbox"`}, migrateFixes: true},
		{name: "table removed from the publication", after: `ALTER PUBLICATION cdc_outbox DROP TABLE event_outbox`,
			want: []string{`does not contain the outbox table "public"."event_outbox"`, `ALTER PUBLICATION "cdc_outbox" ADD TABLE "public"."event_outbox"`, "cdc migrate"}, migrateFixes: true},
		{name: "another table only", after: `CREATE TABLE other (id int); ALTER PUBLICATION cdc_outbox SET TABLE other`,
			want: []string{`does not contain the outbox table`, "ADD TABLE"}},
		{name: "inserts not published", after: `ALTER PUBLICATION cdc_outbox SET (publish = 'update, delete')`,
			want: []string{"does not publish inserts", `ALTER PUBLICATION "cdc_outbox" SET (publish = 'insert'`, "cdc migrate"}, migrateFixes: true},
		{name: "partitions published under their own names", before: partitioned, after: `ALTER PUBLICATION cdc_outbox SET (publish_via_partition_root = false)`,
			since: pg13, want: []string{"partitions of the partitioned outbox", `ALTER PUBLICATION "cdc_outbox" SET (publish_via_partition_root = true)`}, migrateFixes: true},
		{name: "table renamed", after: `ALTER TABLE event_outbox RENAME TO event_outbox_v1`,
			want: []string{`table "public"."event_outbox": it does not exist`, "postgres.table", "renamed"}},
		{name: "row filter", since: pg15, after: `ALTER PUBLICATION cdc_outbox SET TABLE event_outbox WHERE (environment = 'prod')`,
			want: []string{"publishes only the rows", "environment", `ALTER PUBLICATION "cdc_outbox" DROP TABLE "public"."event_outbox"; ALTER PUBLICATION "cdc_outbox" ADD TABLE`}},
		{name: "column list", since: pg15, after: `ALTER PUBLICATION cdc_outbox SET TABLE event_outbox (id, event_type)`,
			want: []string{"publishes only some columns", "ADD TABLE"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			conn, _, _ := connectDB(t)
			var version int
			if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
				t.Fatal(err)
			}
			if version < tc.since {
				t.Logf("server %d has no such publication setting (%d+): nothing to check", version, tc.since)
				return
			}
			if tc.before != "" {
				if _, err := conn.Exec(ctx, tc.before); err != nil {
					t.Fatal(err)
				}
			}
			migrate := func() {
				t.Helper()
				if _, err := migrations.ApplyPostgres(ctx, conn, migrations.Postgres{Table: "public.event_outbox", Publication: "cdc_outbox"}); err != nil {
					t.Fatalf("migrate: %v", err)
				}
			}
			migrate()
			if tc.after != "" {
				if _, err := conn.Exec(ctx, tc.after); err != nil {
					t.Fatal(err)
				}
			}
			err := CheckPublication(ctx, conn, "cdc_outbox", "public", "event_outbox")
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("CheckPublication: %v", err)
				}
				return
			}
			var pe *PublicationError
			if !errors.As(err, &pe) || pe.Publication != "cdc_outbox" || pe.Table != "public.event_outbox" || strings.Contains(err.Error(), "\n") {
				t.Fatalf("CheckPublication = %v, want a one-line *PublicationError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if tc.migrateFixes {
				migrate()
				if err := CheckPublication(ctx, conn, "cdc_outbox", "public", "event_outbox"); err != nil {
					t.Errorf("after `cdc migrate`, as the error says: %v", err)
				}
			}
		})
	}
}
