package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PKI is a throw-away certificate authority for TLS tests, made with
// crypto/x509: a CA, a server certificate for 127.0.0.1 and the DNS names
// ServerNames, a client certificate (CN "postgres", so that PostgreSQL's
// cert authentication maps it to that role), and a second, unrelated CA
// that signed nothing the servers use. Every file is PEM in Dir.
type PKI struct {
	Dir                       string
	CAFile, OtherCAFile       string
	ServerCert, ServerKey     string
	ClientCert, ClientKey     string
	OtherClientCert, OtherKey string // signed by the other CA
	ca, otherCA               *x509.Certificate
	caKey, otherCAKey         *ecdsa.PrivateKey
}

// ServerNames are the DNS names of PKI's server certificate besides the IP
// 127.0.0.1. "localhost" is left out on purpose: connecting by that name is
// how tests provoke a wrong-host-name refusal.
var ServerNames = []string{"cdc-test.internal"}

// NewPKI writes a fresh PKI into a temporary directory.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	p := &PKI{Dir: t.TempDir()}
	p.ca, p.caKey = p.newCA(t, "outbox-cdc test CA", "ca.pem")
	p.CAFile = filepath.Join(p.Dir, "ca.pem")
	p.otherCA, p.otherCAKey = p.newCA(t, "unrelated test CA", "other-ca.pem")
	p.OtherCAFile = filepath.Join(p.Dir, "other-ca.pem")
	p.ServerCert, p.ServerKey = p.issue(t, "server", p.ca, p.caKey, x509.ExtKeyUsageServerAuth, "127.0.0.1", ServerNames)
	p.ClientCert, p.ClientKey = p.issue(t, "client", p.ca, p.caKey, x509.ExtKeyUsageClientAuth, "postgres", nil)
	p.OtherClientCert, p.OtherKey = p.issue(t, "other-client", p.otherCA, p.otherCAKey, x509.ExtKeyUsageClientAuth, "postgres", nil)
	return p
}

func (p *PKI) newCA(t testing.TB, cn, file string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	tmpl := certTemplate(t, cn)
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	der := p.sign(t, file, tmpl, tmpl, key, key) // self-signed
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("pki: %v", err)
	}
	return cert, key
}

// issue writes NAME.pem and NAME-key.pem. A server certificate gets cn as
// its IP SAN, plus dns; a client certificate gets cn as its common name.
func (p *PKI) issue(t testing.TB, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage, cn string, dns []string) (certFile, keyFile string) {
	t.Helper()
	key := newKey(t)
	tmpl := certTemplate(t, cn)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
	tmpl.DNSNames = dns
	if ip := net.ParseIP(cn); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	certFile, keyFile = filepath.Join(p.Dir, name+".pem"), filepath.Join(p.Dir, name+"-key.pem")
	p.sign(t, name+".pem", tmpl, ca, key, caKey)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("pki: %v", err)
	}
	writePEM(t, keyFile, "PRIVATE KEY", keyDER)
	return certFile, keyFile
}

// certTemplate is what every certificate of the PKI shares: a fresh serial,
// cn, and a validity from an hour ago (clock skew) for a day.
func certTemplate(t testing.TB, cn string) *x509.Certificate {
	t.Helper()
	return &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
}

// sign makes the certificate tmpl for key, signed by parent's parentKey,
// writes it to file in the PKI's directory and returns its DER.
func (p *PKI) sign(t testing.TB, file string, tmpl, parent *x509.Certificate, key, parentKey *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatalf("pki: %v", err)
	}
	writePEM(t, filepath.Join(p.Dir, file), "CERTIFICATE", der)
	return der
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("pki: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatalf("pki: %v", err)
	}
	return n
}

// writePEM writes mode 0600: libpq refuses a world-readable key.
func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatalf("pki: %v", err)
	}
}

// TLSServers are private PostgreSQL and ClickHouse servers that speak TLS
// with a PKI's server certificate and require a client certificate signed
// by its CA:
//   - ClickHouse listens in TLS on CHSecureAddr (tcp_port_secure, an
//     <openSSL><server> section with verificationMode strict) and in plain
//     TCP on CHAddr, for the test's own checks. It has a user CHUser whose
//     password is CHPassword.
//   - PostgreSQL (ssl = on) accepts TCP connections only over TLS, with a
//     client certificate and the password PGPassword of the role postgres
//     (hostssl … scram-sha-256 clientcert=verify-full). AdminURL reaches
//     it over its Unix socket, without either.
type TLSServers struct {
	*Servers
	PKI          *PKI
	CHSecureAddr string
	CHUser       string
	PGPort       int
	AdminURL     string // database cdc, over the Unix socket
}

// StartPrivateTLS starts TLSServers; pgPassword and chPassword are the
// passwords the servers require.
func StartPrivateTLS(t testing.TB, name string, pki *PKI, pgPassword, chPassword string) *TLSServers {
	t.Helper()
	secure := FreePort(t)
	ts := &TLSServers{PKI: pki, CHSecureAddr: fmt.Sprintf("127.0.0.1:%d", secure), CHUser: "cdc"}
	ts.Servers = startPrivateWith(t, name, "up", func(dir string) {
		// ClickHouse merges config.d/*.xml into config.xml and users.d/*.xml
		// into users.xml; testenv.sh owns those two files and chowns the
		// whole directory to the server's user after writing them.
		chDir := filepath.Join(dir, "ch")
		for _, f := range []struct{ src, dst string }{
			{pki.ServerCert, "server.pem"}, {pki.ServerKey, "server-key.pem"}, {pki.CAFile, "ca.pem"},
		} {
			copyFile(t, f.src, filepath.Join(chDir, "tls", f.dst), 0o600)
		}
		writeText(t, filepath.Join(chDir, "config.d", "tls.xml"), fmt.Sprintf(`<?xml version="1.0"?>
<yandex>
    <tcp_port_secure>%d</tcp_port_secure>
    <openSSL>
        <server>
            <certificateFile>%[2]s/tls/server.pem</certificateFile>
            <privateKeyFile>%[2]s/tls/server-key.pem</privateKeyFile>
            <caConfig>%[2]s/tls/ca.pem</caConfig>
            <verificationMode>strict</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>false</cacheSessions>
            <disableProtocols>sslv2,sslv3</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>
</yandex>
`, secure, chDir))
		writeText(t, filepath.Join(chDir, "users.d", "cdc.xml"), fmt.Sprintf(`<?xml version="1.0"?>
<yandex>
    <users>
        <cdc>
            <password>%s</password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </cdc>
    </users>
</yandex>
`, chPassword))
	})
	ts.PGPort = portOf(t, ts.PGURL)
	ts.AdminURL = fmt.Sprintf("postgres://postgres@/cdc?host=%s&port=%d&sslmode=disable", filepath.Join(ts.dir, "pg", "run"), ts.PGPort)
	ts.enablePostgresTLS(t, pgPassword)
	return ts
}

// enablePostgresTLS turns ssl on and requires TLS, a client certificate and
// the password on TCP; a reload applies both (no restart).
func (ts *TLSServers) enablePostgresTLS(t testing.TB, password string) {
	t.Helper()
	data := filepath.Join(ts.dir, "pg", "data")
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	for _, f := range []struct{ src, dst string }{
		{ts.PKI.ServerCert, "server.pem"}, {ts.PKI.ServerKey, "server-key.pem"}, {ts.PKI.CAFile, "ca.pem"},
	} {
		dst := filepath.Join(data, f.dst)
		copyFile(t, f.src, dst, 0o600)
		// PostgreSQL refuses a key file it does not own or that others can read.
		if err := os.Chown(dst, uid, gid); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	hba := filepath.Join(data, "pg_hba.conf")
	writeText(t, hba, `# Written by testenv.StartPrivateTLS: TLS, a client certificate and a password on TCP.
local    all          all                 trust
local    replication  all                 trust
hostssl  all          all   127.0.0.1/32  scram-sha-256 clientcert=verify-full
hostssl  replication  all   127.0.0.1/32  scram-sha-256 clientcert=verify-full
`)
	if err := os.Chown(hba, uid, gid); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, ts.AdminURL)
	if err != nil {
		t.Fatalf("testenv: connect over the socket: %v", err)
	}
	defer conn.Close(ctx)
	for _, q := range []string{
		`ALTER SYSTEM SET ssl = on`,
		`ALTER SYSTEM SET ssl_cert_file = 'server.pem'`,
		`ALTER SYSTEM SET ssl_key_file = 'server-key.pem'`,
		`ALTER SYSTEM SET ssl_ca_file = 'ca.pem'`,
		`ALTER SYSTEM SET password_encryption = 'scram-sha-256'`,
		`SELECT pg_reload_conf()`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("testenv: %s: %v", q, err)
		}
	}
	if _, err := conn.Exec(ctx, `ALTER ROLE postgres PASSWORD `+quoteLiteral(password)); err != nil {
		t.Fatalf("testenv: set the password: %v", err)
	}
	// The reload is asynchronous: wait until the server runs with ssl on.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var on string
		if err := conn.QueryRow(ctx, `SHOW ssl`).Scan(&on); err == nil && on == "on" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: PostgreSQL did not turn ssl on")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// PGURL returns a TCP URL of database db over TLS with extra libpq
// parameters (sslmode, sslrootcert, sslcert, sslkey, …).
func (ts *TLSServers) TLSURL(host, password, db, params string) string {
	return fmt.Sprintf("postgres://postgres:%s@%s:%d/%s?%s", password, host, ts.PGPort, db, params)
}

func quoteLiteral(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}

func portOf(t testing.TB, rawURL string) int {
	t.Helper()
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return int(cfg.Port)
}

func copyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	writeBytes(t, dst, b, mode)
}

func writeText(t testing.TB, path, text string) { t.Helper(); writeBytes(t, path, []byte(text), 0o644) }

func writeBytes(t testing.TB, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}
