package chclient_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/outbox-cdc/outbox-cdc/internal/chclient"
	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

const chPassword = "ch-pass-5ad1e"

// TestClickHouseTLS talks to a real ClickHouse 18.16 on its tcp_port_secure,
// which requires a client certificate from the test CA: the good paths
// answer, every bad certificate is refused with an error naming what to fix.
func TestClickHouseTLS(t *testing.T) {
	pki := testenv.NewPKI(t)
	srv := testenv.StartPrivateTLS(t, "chtls", pki, "pg-pass-unused", chPassword)

	good := config.ClickHouseTLS{Enabled: true, CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	tests := []struct {
		name string
		addr string
		tls  func(config.ClickHouseTLS) config.ClickHouseTLS
		want []string // substrings of the error; none: the query works
	}{
		{"verified, client certificate", srv.CHSecureAddr, func(c config.ClickHouseTLS) config.ClickHouseTLS { return c }, nil},
		{"server_name carried by the certificate", srv.CHSecureAddr, func(c config.ClickHouseTLS) config.ClickHouseTLS {
			c.ServerName = testenv.ServerNames[0]
			return c
		}, nil},
		{"wrong CA", srv.CHSecureAddr, func(c config.ClickHouseTLS) config.ClickHouseTLS {
			c.CAFile = pki.OtherCAFile
			return c
		}, []string{"not signed by a CA of clickhouse.tls.ca_file " + pki.OtherCAFile, "x509: certificate signed by unknown authority"}},
		{"system roots only", srv.CHSecureAddr, func(c config.ClickHouseTLS) config.ClickHouseTLS {
			c.CAFile = ""
			return c
		}, []string{"not signed by a CA of the system's roots"}},
		{"wrong server name", srv.CHSecureAddr, func(c config.ClickHouseTLS) config.ClickHouseTLS {
			c.ServerName = "wrong.example"
			return c
		}, []string{`not valid for "wrong.example"`, "clickhouse.tls.server_name", "x509: certificate is valid for cdc-test.internal, not wrong.example"}},
		{"insecure_skip_verify accepts the wrong CA", srv.CHSecureAddr, func(c config.ClickHouseTLS) config.ClickHouseTLS {
			c.CAFile, c.InsecureSkipVerify = pki.OtherCAFile, true
			return c
		}, nil},
		{"no client certificate", srv.CHSecureAddr, func(c config.ClickHouseTLS) config.ClickHouseTLS {
			c.CertFile, c.KeyFile = "", ""
			return c
		}, []string{"the server refused the connection; if it requires a client certificate, set clickhouse.tls.cert_file and key_file", "certificate required"}},
		{"client certificate of another CA", srv.CHSecureAddr, func(c config.ClickHouseTLS) config.ClickHouseTLS {
			c.CertFile, c.KeyFile = pki.OtherClientCert, pki.OtherKey
			return c
		}, []string{"the server refused the connection or the client certificate clickhouse.tls.cert_file " + pki.OtherClientCert, "unknown certificate authority"}},
		{"wrong password", srv.CHSecureAddr, func(c config.ClickHouseTLS) config.ClickHouseTLS { return c }, []string{"Wrong password for user cdc"}},
		{"TLS to the plain port", srv.CHAddr, func(c config.ClickHouseTLS) config.ClickHouseTLS { return c },
			[]string{"did not answer in TLS", "tcp_port_secure"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default().ClickHouse
			c.Addr, c.Username, c.Password, c.DialTimeout = []string{tt.addr}, srv.CHUser, chPassword, 5*time.Second
			if tt.name == "wrong password" {
				c.Password = "not-" + chPassword
			}
			c.TLS = tt.tls(good)
			err := query(t, c)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("query over TLS: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("query succeeded, want a refusal")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
			t.Logf("refused as wanted: %v", err)
		})
	}
}

func query(t *testing.T, c config.ClickHouse) error {
	t.Helper()
	conn, err := clickhouse.Open(chclient.Options(c))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The user cdc has a password (the packaged default has none): an
	// answer means the credentials went through the TLS connection.
	var version string
	return conn.QueryRow(ctx, "SELECT version()").Scan(&version)
}

// TestRotation: the dialer reads the CA and the client certificate at every
// dial, so files replaced on disk serve the next connection without a
// restart. A Go TLS server stands in for ClickHouse and records the client
// certificate of each connection.
func TestRotation(t *testing.T) {
	a, b := testenv.NewPKI(t), testenv.NewPKI(t)
	dir := t.TempDir()
	ca, cert, key := dir+"/ca.pem", dir+"/client.pem", dir+"/client-key.pem"
	install := func(p *testenv.PKI) {
		for src, dst := range map[string]string{p.CAFile: ca, p.ClientCert: cert, p.ClientKey: key} {
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}

	// The server presents a's certificate first, b's after the rotation,
	// and accepts client certificates of either CA.
	serverCert := func(p *testenv.PKI) tls.Certificate {
		c, err := tls.LoadX509KeyPair(p.ServerCert, p.ServerKey)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	clients := x509.NewCertPool()
	for _, p := range []*testenv.PKI{a, b} {
		pem, _ := os.ReadFile(p.CAFile)
		clients.AppendCertsFromPEM(pem)
	}
	current := make(chan tls.Certificate, 1)
	current <- serverCert(a)
	seen := make(chan string, 4)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  clients,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c := <-current
			current <- c
			return &c, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			tc := conn.(*tls.Conn)
			if err := tc.Handshake(); err == nil {
				seen <- tc.ConnectionState().PeerCertificates[0].SerialNumber.String()
			} else {
				seen <- "handshake: " + err.Error()
			}
			conn.Close()
		}
	}()

	c := config.Default().ClickHouse
	c.TLS = config.ClickHouseTLS{Enabled: true, CAFile: ca, CertFile: cert, KeyFile: key}
	dial := chclient.DialContext(c)
	connect := func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return dial(ctx, ln.Addr().String())
	}

	install(a)
	conn, err := connect()
	if err != nil {
		t.Fatalf("dial with a's files: %v", err)
	}
	conn.Close()
	if got, want := <-seen, serialOf(t, a.ClientCert); got != want {
		t.Fatalf("server saw client certificate %s, want a's %s", got, want)
	}

	// The server's certificate is renewed by another CA: the old CA file
	// refuses it, the rotated one accepts it.
	<-current
	current <- serverCert(b)
	if _, err := connect(); err == nil || !strings.Contains(err.Error(), "not signed by a CA of clickhouse.tls.ca_file") {
		t.Fatalf("dial with the old CA against the new server certificate: %v", err)
	}
	<-seen
	install(b)
	conn, err = connect()
	if err != nil {
		t.Fatalf("dial after rotating the files: %v", err)
	}
	conn.Close()
	if got, want := <-seen, serialOf(t, b.ClientCert); got != want {
		t.Fatalf("server saw client certificate %s, want the rotated one %s", got, want)
	}
}

func serialOf(t *testing.T, certFile string) string {
	t.Helper()
	c, err := tls.LoadX509KeyPair(certFile, strings.Replace(certFile, ".pem", "-key.pem", 1))
	if err != nil {
		t.Fatal(err)
	}
	x, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return x.SerialNumber.String()
}
