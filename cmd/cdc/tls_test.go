package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// Marker passwords: each must reach its server (the servers require them)
// and appear in no output of cdc.
const (
	pgMarker = "pgMarker-0f5c2a71"
	chMarker = "chMarker-d93b6e08"
)

// tlsCase is a private PostgreSQL (ssl = on, client certificate and password
// required on TCP) and ClickHouse (tcp_port_secure, client certificate
// required) and cdc's environment for them, secrets in files.
type tlsCase struct {
	t       *testing.T
	bin     string
	pki     *testenv.PKI
	srv     *testenv.TLSServers
	dir     string
	chDB    string
	sentry  *sentryServer
	outputs map[string]string // every output of cdc, by what produced it
}

func newTLSCase(t *testing.T) *tlsCase {
	c := &tlsCase{t: t, bin: cdcBinary(t), pki: testenv.NewPKI(t), dir: t.TempDir(), chDB: "tls_e2e", outputs: map[string]string{}}
	c.srv = testenv.StartPrivateTLS(t, "tls", c.pki, pgMarker, chMarker)
	c.sentry = newSentryServer(t)
	return c
}

// pgParams are the libpq TLS parameters of a URL that passes every check.
func (c *tlsCase) pgParams() string {
	return "sslmode=verify-full&sslrootcert=" + c.pki.CAFile + "&sslcert=" + c.pki.ClientCert + "&sslkey=" + c.pki.ClientKey
}

func (c *tlsCase) file(name, content string) string {
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// env is cdc's environment: the PostgreSQL URL, the ClickHouse password and
// the Sentry DSN from files (with the newline an editor leaves), TLS to both.
func (c *tlsCase) env(pgURL string, extra ...string) []string {
	env := []string{
		"CDC_POSTGRES_URL_FILE=" + c.file("pg-url", pgURL+"\n"),
		"CDC_POSTGRES_SLOT=cdc",
		"CDC_CLICKHOUSE_ADDR=" + c.srv.CHSecureAddr,
		"CDC_CLICKHOUSE_DATABASE=" + c.chDB,
		"CDC_CLICKHOUSE_USERNAME=" + c.srv.CHUser,
		"CDC_CLICKHOUSE_PASSWORD_FILE=" + c.file("ch-password", chMarker+"\n"),
		"CDC_CLICKHOUSE_TLS_ENABLED=true",
		"CDC_CLICKHOUSE_TLS_CA_FILE=" + c.pki.CAFile,
		"CDC_CLICKHOUSE_TLS_CERT_FILE=" + c.pki.ClientCert,
		"CDC_CLICKHOUSE_TLS_KEY_FILE=" + c.pki.ClientKey,
		"CDC_SENTRY_DSN_FILE=" + c.file("sentry-dsn", c.sentry.dsn+"\n"),
		"CDC_LOG_LEVEL=debug",
		"CDC_LOG_FORMAT=json",
		"CDC_BATCH_FLUSH_INTERVAL=100ms",
		"CDC_RETRY_INITIAL_BACKOFF=50ms",
		"CDC_RETRY_MAX_BACKOFF=1s",
		"CDC_REPLICATION_STATUS_INTERVAL=1s",
	}
	return append(env, extra...)
}

func (c *tlsCase) goodURL() string { return c.srv.TLSURL("127.0.0.1", pgMarker, "cdc", c.pgParams()) }

// cdc runs a command to its end and keeps its output.
func (c *tlsCase) cdc(name string, env []string, args ...string) (string, int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	c.outputs[name] = string(out)
	return string(out), code
}

// TestTLSPipeline: `cdc migrate`, `cdc run`, `cdc status` and `cdc verify`
// work over TLS to both servers with client certificates (verify-full on
// PostgreSQL, for the replication connection and the pool alike), their
// secrets read from files; and the marker passwords appear in no output:
// logs at debug, status, verify, /metrics, Sentry events, a goroutine dump.
func TestTLSPipeline(t *testing.T) {
	c := newTLSCase(t)
	env := c.env(c.goodURL())

	if out, code := c.cdc("migrate", env, "migrate"); code != 0 {
		t.Fatalf("cdc migrate over TLS: exit %d\n%s", code, out)
	}
	o := testenv.OpenOutbox(t, c.srv.AdminURL, c.srv.CHAddr, c.chDB)

	port := testenv.FreePort(t)
	d := startDaemon(t, c.bin, withListen(env, port), c.dir, "run")
	waitUntil(t, "ready over TLS", 60*time.Second, func() bool {
		code, _ := httpGet(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
		return code == 200 || !d.running()
	})
	if !d.running() {
		t.Fatalf("cdc run stopped:\n%s", readFile(d.log))
	}
	ids := o.MustInsert(300, true)
	o.WaitCH(300, 60*time.Second)
	o.AssertExactlyOnce(ids, nil)

	// The walsender of the slot and cdc's other sessions are all TLS.
	var plain int
	if err := o.PG.QueryRow(context.Background(),
		`SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
		 WHERE a.client_addr IS NOT NULL AND NOT s.ssl`).Scan(&plain); err != nil {
		t.Fatal(err)
	}
	var walsenderTLS bool
	if err := o.PG.QueryRow(context.Background(),
		`SELECT s.ssl AND s.client_dn = '/CN=postgres' FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)`).Scan(&walsenderTLS); err != nil {
		t.Fatalf("the replication connection: %v", err)
	}
	if plain != 0 || !walsenderTLS {
		t.Errorf("%d TCP sessions without TLS; walsender over TLS with the client certificate: %v", plain, walsenderTLS)
	}

	_, body := httpGet(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	c.outputs["/metrics"] = body

	out, code := c.cdc("status", env, "status", "--json")
	var st struct {
		Slot            string  `json:"slot_name"`
		ClickHouseError *string `json:"clickhouse_error"`
		Version         *string `json:"clickhouse_version"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Slot != "cdc" || st.ClickHouseError != nil || st.Version == nil {
		t.Errorf("cdc status --json (exit %d) did not read both servers over TLS (%v):\n%s", code, err, out)
	}
	from, to := ids[0], ids[len(ids)-1]
	if out, code := c.cdc("verify", env, "verify", "--json", "--from-id", fmt.Sprint(from), "--to-id", fmt.Sprint(to)); code != 0 {
		t.Errorf("cdc verify over TLS: exit %d\n%s", code, out)
	}

	// SIGQUIT: the Go runtime dumps every goroutine's stack, as a panic does.
	d.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Fatal("no exit within 30s of SIGQUIT")
	}
	c.outputs["run log and goroutine dump"] = readFile(d.log)
	if !strings.Contains(c.outputs["run log and goroutine dump"], "goroutine ") {
		t.Errorf("no goroutine dump after SIGQUIT")
	}
	if !strings.Contains(c.outputs["run log and goroutine dump"], `"level":"DEBUG"`) {
		t.Errorf("the run log has no debug lines: the check would miss what debug logs")
	}
	// A set-up error reaches Sentry: its event must not carry the secrets.
	// (The leader is gone: a second instance would stand by.)
	bad := startDaemon(t, c.bin, append(withListen(env, testenv.FreePort(t)), "CDC_CLICKHOUSE_TABLE=no_such_table"), c.dir, "run-bad")
	waitUntil(t, "a Sentry event", 60*time.Second, func() bool { return c.sentry.find("no_such_table") != "" })
	waitUntil(t, "the failing cdc run to stop", 60*time.Second, func() bool { return !bad.running() })
	c.outputs["run-bad log"] = readFile(bad.log)
	c.sentry.mu.Lock()
	c.outputs["sentry events"] = strings.Join(c.sentry.envelopes, "\n")
	c.sentry.mu.Unlock()

	c.assertNoMarker()
}

func (c *tlsCase) assertNoMarker() {
	c.t.Helper()
	for name, out := range c.outputs {
		for _, m := range []string{pgMarker, chMarker} {
			if i := strings.Index(out, m); i >= 0 {
				c.t.Errorf("%s shows a secret: …%s…", name, out[max(0, i-200):min(len(out), i+100)])
			}
		}
	}
	c.t.Logf("no secret in %d outputs (%d bytes)", len(c.outputs), func() (n int) {
		for _, o := range c.outputs {
			n += len(o)
		}
		return n
	}())
}

// TestTLSRefusals: a wrong CA, a wrong server name or a missing client
// certificate stops `cdc migrate` before it changes anything, with an error
// that says what is wrong, for either server. So does setting a secret and
// its _file twin.
func TestTLSRefusals(t *testing.T) {
	c := newTLSCase(t)
	p := c.pki
	tests := []struct {
		name  string
		pgURL string
		extra []string
		want  []string
	}{
		{"postgres wrong CA", c.srv.TLSURL("127.0.0.1", pgMarker, "cdc", "sslmode=verify-full&sslrootcert="+p.OtherCAFile+"&sslcert="+p.ClientCert+"&sslkey="+p.ClientKey), nil,
			[]string{"postgres: connect", "x509: certificate signed by unknown authority"}},
		{"postgres wrong host name", c.srv.TLSURL("localhost", pgMarker, "cdc", c.pgParams()), nil,
			[]string{"postgres: connect", "x509: certificate is valid for cdc-test.internal, not localhost"}},
		{"postgres without client certificate", c.srv.TLSURL("127.0.0.1", pgMarker, "cdc", "sslmode=verify-full&sslrootcert="+p.CAFile), nil,
			[]string{"postgres: connect", "certificate"}},
		{"postgres without TLS", c.srv.TLSURL("127.0.0.1", pgMarker, "cdc", "sslmode=disable"), nil,
			[]string{"postgres: connect", "no pg_hba.conf entry", "no encryption"}},
		{"clickhouse wrong CA", c.goodURL(), []string{"CDC_CLICKHOUSE_TLS_CA_FILE=" + p.OtherCAFile},
			[]string{"not signed by a CA of clickhouse.tls.ca_file " + p.OtherCAFile, "nothing was changed"}},
		{"clickhouse wrong server name", c.goodURL(), []string{"CDC_CLICKHOUSE_TLS_SERVER_NAME=wrong.example"},
			[]string{`not valid for "wrong.example"`, "clickhouse.tls.server_name"}},
		{"clickhouse without client certificate", c.goodURL(), []string{"CDC_CLICKHOUSE_TLS_CERT_FILE=", "CDC_CLICKHOUSE_TLS_KEY_FILE="},
			[]string{"set clickhouse.tls.cert_file and key_file"}},
		{"clickhouse password and its file", c.goodURL(), []string{"CDC_CLICKHOUSE_PASSWORD=" + chMarker},
			[]string{"clickhouse.password_file must not be set together with clickhouse.password (clickhouse.password is set from CDC_CLICKHOUSE_PASSWORD)"}},
		{"unreadable secret file", c.goodURL(), []string{"CDC_SENTRY_DSN_FILE=" + filepath.Join(c.dir, "missing")},
			[]string{"sentry.dsn_file names a file that cannot be read: " + filepath.Join(c.dir, "missing") + ": no such file or directory"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := c.cdc(tt.name, c.env(tt.pgURL, tt.extra...), "migrate")
			if code == 0 {
				t.Fatalf("cdc migrate succeeded:\n%s", out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			t.Logf("exit %d: %s", code, strings.TrimSpace(out))
		})
	}
	// Nothing was migrated by any of them.
	o := testenv.OpenOutbox(t, c.srv.AdminURL, c.srv.CHAddr, "default")
	var n int
	if err := o.PG.QueryRow(context.Background(), `SELECT count(*) FROM pg_publication`).Scan(&n); err != nil || n != 0 {
		t.Errorf("publications after refused migrations: %d (%v)", n, err)
	}
	c.assertNoMarker()
}
