// Package deploy_test checks the deployment files that no Go code loads, so a
// broken file fails `go test ./...` instead of a user's rollout:
//
//   - Dockerfile and .dockerignore: multi-stage, static, non-root, and the
//     binary builds from the filtered build context with the Dockerfile's own
//     -ldflags, stamping `cdc version`;
//   - docker-compose.yml: loaded with the compose-spec parser, essentials
//     checked (services, depends_on conditions, wal_level=logical, profiles,
//     mounted files exist); its `cluster` profile's Keeper and replica
//     configurations (deploy/compose/cluster/) fit together
//     (compose_cluster_test.go);
//   - deploy/systemd/cdc.service: directives, and `systemd-analyze verify`
//     (required: install Debian's package `systemd`);
//   - deploy/k8s/*.yaml: every manifest parsed, essentials checked, the
//     ConfigMap's config.yaml loaded by internal/config;
//   - deploy/grafana and deploy/prometheus: the dashboard JSON and alert
//     rules parse, every PromQL expression parses, and every metric they name
//     is one that internal/metrics registers;
//   - docs/configuration.md: every configuration key with its environment
//     variable and default (from config.Default()), in sync with
//     config.example.yaml; relative links in docs/ resolve.
//
// Nothing here needs Docker, a cluster or a network.
package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"

	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/internal/metrics"
)

// root is the repository root (the tests run in deploy/).
var root = func() string {
	abs, err := filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	return abs
}()

func repoPath(parts ...string) string { return filepath.Join(append([]string{root}, parts...)...) }

func readFile(t *testing.T, parts ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(repoPath(parts...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ---------------------------------------------------------------------------
// Dockerfile

// dockerInstr is one Dockerfile instruction, continuation lines joined.
type dockerInstr struct {
	line int
	cmd  string // upper case
	args string
}

func parseDockerfile(t *testing.T) []dockerInstr {
	t.Helper()
	var out []dockerInstr
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, "Dockerfile")))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(trimmed, "#") {
			continue // comment inside a continued instruction
		}
		if cur.Len() == 0 {
			start = n
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, dockerInstr{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)})
		cur.Reset()
	}
	if cur.Len() > 0 {
		t.Fatalf("Dockerfile: line continuation at end of file")
	}
	return out
}

var ldflagsRE = regexp.MustCompile(`-ldflags\s+"([^"]+)"`)

func TestDockerfile(t *testing.T) {
	instrs := parseDockerfile(t)
	var stages [][]dockerInstr // instructions per FROM
	for _, in := range instrs {
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("Dockerfile line %d: %s before the first FROM", in.line, in.cmd)
			}
			continue
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stage(s); want a multi-stage build (build + minimal runtime)", len(stages))
	}

	// Build stage: a static build with version and commit stamped in.
	var args []string
	var build string
	for _, st := range stages[:len(stages)-1] {
		for _, in := range st {
			switch in.cmd {
			case "ARG":
				name, _, _ := strings.Cut(in.args, "=")
				args = append(args, name)
			case "RUN":
				if strings.Contains(in.args, "go build") {
					build = in.args
				}
			}
		}
	}
	for _, a := range []string{"VERSION", "COMMIT"} {
		if !slices.Contains(args, a) {
			t.Errorf("Dockerfile: no build argument %s (ARG %s) in the build stage", a, a)
		}
	}
	if build == "" {
		t.Fatal("Dockerfile: no RUN ... go build in the build stage")
	}
	for _, want := range []string{"CGO_ENABLED=0", "./cmd/cdc", "-X main.version=${VERSION}", "-X main.commit=${COMMIT}"} {
		if !strings.Contains(build, want) {
			t.Errorf("Dockerfile: the go build step lacks %q:\n%s", want, build)
		}
	}

	// Runtime stage: minimal base, the binary, a non-root user.
	final := stages[len(stages)-1]
	base := strings.Fields(final[0].args)
	image := ""
	for _, f := range base {
		if !strings.HasPrefix(f, "--") {
			image = f
			break
		}
	}
	switch {
	case strings.HasPrefix(image, "gcr.io/distroless/static"):
	case image == "scratch":
		found := false
		for _, in := range final {
			if in.cmd == "COPY" && strings.Contains(in.args, "ca-certificates") {
				found = true
			}
		}
		if !found {
			t.Error("Dockerfile: a scratch runtime image needs the CA certificates copied in (sslmode=verify-full)")
		}
	default:
		t.Errorf("Dockerfile: runtime base %q; want gcr.io/distroless/static* or scratch", image)
	}
	var user, entrypoint string
	copied := false
	for _, in := range final {
		switch in.cmd {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		case "COPY":
			if strings.Contains(in.args, "--from=") && strings.Contains(in.args, "/usr/local/bin/cdc") {
				copied = true
			}
		}
	}
	if u, _, _ := strings.Cut(user, ":"); u == "" || u == "root" || u == "0" {
		t.Errorf("Dockerfile: runtime stage USER is %q; want a non-root user", user)
	}
	if !copied {
		t.Error("Dockerfile: runtime stage does not COPY --from=<build> the binary to /usr/local/bin/cdc")
	}
	if !strings.Contains(entrypoint, "/usr/local/bin/cdc") {
		t.Errorf("Dockerfile: ENTRYPOINT %q does not run /usr/local/bin/cdc", entrypoint)
	}

	// The binary builds from the build context Docker would send, with the
	// Dockerfile's -ldflags, is static and reports the stamped version.
	bin := cdcBinary(t)
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("cdc version: %v\n%s", err, out)
	}
	want := fmt.Sprintf("cdc %s (commit %s,", testVersion, testCommit)
	if !strings.Contains(string(out), want) {
		t.Errorf("cdc version printed %q; want it to contain %q (is -X main.version / main.commit right?)", out, want)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the CGO_ENABLED=0 binary is dynamically linked (%v): it would not run on distroless/static", p.Type)
		}
	}
}

const (
	testVersion = "v0.0.0-deploytest"
	testCommit  = "deadbee"
)

var (
	binOnce sync.Once
	binDir  string // removed by TestMain
	binPath string
	binErr  error
)

// checkMemoryLimit checks a memory limit of mib MiB against the bound of
// DESIGN.md §3 invariant 14 at the default batch.max_bytes (peak RSS <
// 2 × max_bytes + 64 MiB, measured by cdc-bench -scenarios memory): above
// it, so the process is never killed within it, and at most half as much
// again, so the limit follows from the bound rather than hiding a leak.
func checkMemoryLimit(t *testing.T, what, mib string) {
	t.Helper()
	n, err := strconv.ParseInt(mib, 10, 64)
	if err != nil {
		t.Errorf("%s: %q MiB: %v", what, mib, err)
		return
	}
	bound := (2*config.Default().Batch.MaxBytes + 64<<20) >> 20
	if n <= bound || n > bound*3/2 {
		t.Errorf("%s is %d MiB, want above the memory bound of %d MiB (2 × batch.max_bytes + 64 MiB) and at most %d MiB",
			what, n, bound, bound*3/2)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// cdcBinary builds cmd/cdc once, the way the Dockerfile does: from a copy of
// the build context filtered by .dockerignore, CGO_ENABLED=0, with the
// Dockerfile's -ldflags (VERSION=testVersion, COMMIT=testCommit).
func cdcBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() { binPath, binErr = buildFromContext() })
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func buildFromContext() (string, error) {
	dockerfile, err := os.ReadFile(repoPath("Dockerfile"))
	if err != nil {
		return "", err
	}
	m := ldflagsRE.FindSubmatch(dockerfile)
	if m == nil {
		return "", errors.New(`Dockerfile: no -ldflags "..." in the go build step`)
	}
	ldflags := strings.NewReplacer("${VERSION}", testVersion, "${COMMIT}", testCommit).Replace(string(m[1]))

	dir, err := os.MkdirTemp("", "cdc-deploy-test-")
	if err != nil {
		return "", err
	}
	binDir = dir // shared by several tests: TestMain removes it
	ctxDir := filepath.Join(dir, "context")
	if err := copyBuildContext(root, ctxDir); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "cdc")
	cmd := exec.Command(goTool(), "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", out, "./cmd/cdc")
	cmd.Dir = ctxDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build in the .dockerignore-filtered build context: %v\n%s", err, b)
	}
	return out, nil
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join("/usr/local/go", "bin", "go")
}

// copyBuildContext copies src to dst without what .dockerignore excludes,
// matching paths as Docker does (moby/patternmatcher).
func copyBuildContext(src, dst string) error {
	f, err := os.Open(filepath.Join(src, ".dockerignore"))
	if err != nil {
		return err
	}
	patterns, err := ignorefile.ReadAll(f)
	f.Close()
	if err != nil {
		return err
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil || rel == "." {
			return err
		}
		skip, err := pm.MatchesOrParentMatches(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		if skip {
			if d.IsDir() && !pm.Exclusions() {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(target, b, 0o644)
		}
		return nil // sockets, symlinks: not needed to build
	})
}

func TestDockerignoreKeepsWhatTheBuildNeeds(t *testing.T) {
	f, err := os.Open(repoPath(".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"go.mod", "go.sum", "cmd/cdc/main.go", "migrations/postgres/0001_outbox.sql"} {
		if skip, _ := pm.MatchesOrParentMatches(p); skip {
			t.Errorf(".dockerignore excludes %s, which the image build needs", p)
		}
	}
	for _, p := range []string{".git/HEAD", "bin/cdc"} {
		if skip, _ := pm.MatchesOrParentMatches(p); !skip {
			t.Errorf(".dockerignore should exclude %s", p)
		}
	}
}

// ---------------------------------------------------------------------------
// docker-compose.yml

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	// Only the variables the file interpolates, so the result does not
	// depend on the caller's environment.
	opts, err := cli.NewProjectOptions([]string{repoPath("docker-compose.yml")},
		cli.WithWorkingDirectory(root),
		cli.WithEnv([]string{}),
		cli.WithProfiles([]string{"*"}),
	)
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	return p
}

func TestCompose(t *testing.T) {
	p := loadCompose(t)
	services := p.AllServices()
	get := func(name string) types.ServiceConfig {
		t.Helper()
		s, ok := services[name]
		if !ok {
			t.Fatalf("docker-compose.yml: no service %q", name)
		}
		return s
	}
	profiles := map[string][]string{
		"postgres": nil, "clickhouse": nil, "migrate": nil, "cdc": nil,
		"prometheus": {"monitoring"}, "grafana": {"monitoring"}, "producer": {"producer"},
	}
	for name, want := range profiles {
		if got := get(name).Profiles; !slices.Equal(got, want) {
			t.Errorf("service %s: profiles %v, want %v", name, got, want)
		}
	}

	// PostgreSQL: a current major with logical decoding.
	pg := get("postgres")
	major := imageMajor(t, pg.Image, "postgres")
	if major < 17 {
		t.Errorf("postgres image %s: want a current major (17 or newer)", pg.Image)
	}
	cmd := strings.Join(pg.Command, " ")
	for _, want := range []string{"wal_level=logical", "max_slot_wal_keep_size="} {
		if !strings.Contains(cmd, want) {
			t.Errorf("postgres command %q lacks %s", cmd, want)
		}
	}
	if major >= 18 {
		// 18+ images keep PGDATA under /var/lib/postgresql/<major>/docker
		// and refuse to start with a volume on .../data.
		for _, v := range pg.Volumes {
			if v.Target == "/var/lib/postgresql/data" {
				t.Errorf("postgres %s: mount the data volume at /var/lib/postgresql, not %s", pg.Image, v.Target)
			}
		}
	}
	requireHealthcheck(t, pg)

	ch := get("clickhouse")
	if m := imageMajor(t, ch.Image, "clickhouse/clickhouse-server"); m < 24 {
		t.Errorf("clickhouse image %s: want 24 or newer", ch.Image)
	}
	requireHealthcheck(t, ch)

	// migrate then run, from the Dockerfile.
	for _, name := range []string{"migrate", "cdc"} {
		s := get(name)
		if s.Build == nil {
			t.Errorf("service %s: no build section", name)
		} else {
			df := s.Build.Dockerfile
			if df == "" {
				df = "Dockerfile"
			}
			if _, err := os.Stat(filepath.Join(s.Build.Context, df)); err != nil {
				t.Errorf("service %s: build: %v", name, err)
			}
			for _, a := range []string{"VERSION", "COMMIT"} {
				if _, ok := s.Build.Args[a]; !ok {
					t.Errorf("service %s: build args lack %s", name, a)
				}
			}
		}
		checkComposeEnv(t, name, s)
	}
	if got := get("migrate").Command; !slices.Equal(got, []string{"migrate"}) {
		t.Errorf("migrate command %v, want [migrate]", got)
	}
	requireDependsOn(t, get("migrate"), map[string]string{
		"postgres": types.ServiceConditionHealthy, "clickhouse": types.ServiceConditionHealthy})

	c := get("cdc")
	if !slices.Equal(c.Command, []string{"run"}) {
		t.Errorf("cdc command %v, want [run]", c.Command)
	}
	requireDependsOn(t, c, map[string]string{
		"migrate":    types.ServiceConditionCompletedSuccessfully,
		"postgres":   types.ServiceConditionHealthy,
		"clickhouse": types.ServiceConditionHealthy,
	})
	requireHealthcheck(t, c)
	if c.StopSignal != "" && c.StopSignal != "SIGTERM" {
		t.Errorf("cdc stop_signal %s, want SIGTERM", c.StopSignal)
	}
	if len(c.Secrets) == 0 || c.Environment["CDC_POSTGRES_URL_FILE"] == nil {
		t.Errorf("cdc: want its secrets as files (secrets: and CDC_POSTGRES_URL_FILE), beside migrate's environment variables")
	}
	if v := get("migrate").Environment["CDC_POSTGRES_URL"]; v == nil || *v == "" {
		t.Errorf("migrate: want CDC_POSTGRES_URL as an environment variable (the other way to pass a secret)")
	}
	cfg := loadComposeConfig(t, p, c)
	if c.StopGracePeriod == nil || time.Duration(*c.StopGracePeriod) <= cfg.Shutdown.Grace {
		t.Errorf("cdc stop_grace_period %v must exceed shutdown.grace %v", c.StopGracePeriod, cfg.Shutdown.Grace)
	}
	_, port, _ := strings.Cut(cfg.HTTP.Listen, ":")
	if strings.HasPrefix(cfg.HTTP.Listen, "127.") || strings.HasPrefix(cfg.HTTP.Listen, "localhost") {
		t.Errorf("cdc http.listen %s only listens on loopback inside the container", cfg.HTTP.Listen)
	}
	published := false
	for _, pc := range c.Ports {
		if strconv.Itoa(int(pc.Target)) == port {
			published = true
		}
	}
	if !published {
		t.Errorf("cdc: http.listen port %s is not published", port)
	}

	// The producer writes only after migrate created the table; its script
	// is valid shell.
	prod := get("producer")
	requireDependsOn(t, prod, map[string]string{"migrate": types.ServiceConditionCompletedSuccessfully})
	if len(prod.Entrypoint) >= 2 && prod.Entrypoint[len(prod.Entrypoint)-1] == "-c" && len(prod.Command) == 1 {
		sh := exec.Command("sh", "-n")
		sh.Stdin = strings.NewReader(prod.Command[0])
		if out, err := sh.CombinedOutput(); err != nil {
			t.Errorf("producer script is not valid sh: %v\n%s\n%s", err, out, prod.Command[0])
		}
	} else {
		t.Errorf("producer: want entrypoint [sh -c] and one script as command, got %v %v", prod.Entrypoint, prod.Command)
	}

	// Monitoring: the mounted files exist and fit together.
	prom := get("prometheus")
	promMounts := bindMounts(t, prom)
	configFile := ""
	for _, a := range prom.Command {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			configFile = v
		}
	}
	promSrc, ok := promMounts[configFile]
	if !ok {
		t.Fatalf("prometheus: --config.file=%s is not a mounted file (mounts %v)", configFile, promMounts)
	}
	var promCfg struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	decodeYAML(t, promSrc, &promCfg)
	for _, rf := range promCfg.RuleFiles {
		src, ok := promMounts[rf]
		if !ok {
			t.Errorf("prometheus.yml rule file %s is not mounted", rf)
			continue
		}
		if filepath.Base(src) != "alerts.yml" {
			t.Errorf("prometheus rule file %s is %s, want deploy/prometheus/alerts.yml", rf, src)
		}
	}
	if len(promCfg.RuleFiles) == 0 {
		t.Error("prometheus.yml loads no rule_files (want alerts.yml)")
	}
	scraped := false
	for _, sc := range promCfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			if slices.Contains(st.Targets, "cdc:"+port) {
				scraped = true
				if sc.JobName != "cdc" {
					t.Errorf("prometheus.yml scrapes cdc as job %q; the dashboard and alerts expect one job per slot, named cdc here", sc.JobName)
				}
			}
		}
	}
	if !scraped {
		t.Errorf("prometheus.yml does not scrape cdc:%s", port)
	}

	graf := get("grafana")
	grafMounts := bindMounts(t, graf)
	prov, ok := grafMounts["/etc/grafana/provisioning"]
	if !ok {
		t.Fatalf("grafana: deploy/grafana/provisioning is not mounted at /etc/grafana/provisioning (mounts %v)", grafMounts)
	}
	var dashTarget string
	for target, src := range grafMounts {
		if filepath.Base(src) == "cdc-dashboard.json" {
			dashTarget = target
		}
	}
	if dashTarget == "" {
		t.Fatal("grafana: deploy/grafana/cdc-dashboard.json is not mounted")
	}
	var providers struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Name    string `yaml:"name"`
			Type    string `yaml:"type"`
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	var datasources struct {
		APIVersion  int `yaml:"apiVersion"`
		Datasources []struct {
			Name string `yaml:"name"`
			UID  string `yaml:"uid"`
			Type string `yaml:"type"`
			URL  string `yaml:"url"`
		} `yaml:"datasources"`
	}
	provFiles := map[string]any{"dashboards": &providers, "datasources": &datasources}
	for dir, v := range provFiles {
		files, _ := filepath.Glob(filepath.Join(prov, dir, "*.y*ml"))
		if len(files) != 1 {
			t.Fatalf("grafana provisioning: want one YAML file in %s/, found %v", dir, files)
		}
		decodeYAML(t, files[0], v)
	}
	if len(providers.Providers) == 0 || providers.Providers[0].Options.Path != filepath.Dir(dashTarget) {
		t.Errorf("grafana dashboard provider path %+v; the dashboard is mounted in %s", providers.Providers, filepath.Dir(dashTarget))
	}
	if len(datasources.Datasources) == 0 || datasources.Datasources[0].Type != "prometheus" ||
		datasources.Datasources[0].URL != "http://prometheus:9090" {
		t.Errorf("grafana datasource %+v; want type prometheus at http://prometheus:9090", datasources.Datasources)
	}
	requireDependsOn(t, graf, map[string]string{"prometheus": types.ServiceConditionHealthy})
	requireHealthcheck(t, prom)
}

// imageMajor returns the major version of image repo:tag (e.g. 18 for
// postgres:18.1, 25 for clickhouse/clickhouse-server:25.8).
func imageMajor(t *testing.T, image, repo string) int {
	t.Helper()
	name, tag, ok := strings.Cut(image, ":")
	if !ok || name != repo {
		t.Fatalf("image %q: want %s:<version>", image, repo)
	}
	major, err := strconv.Atoi(strings.SplitN(strings.SplitN(tag, "-", 2)[0], ".", 2)[0])
	if err != nil {
		t.Fatalf("image %q: tag is not a version", image)
	}
	return major
}

func requireHealthcheck(t *testing.T, s types.ServiceConfig) {
	t.Helper()
	if s.HealthCheck == nil || s.HealthCheck.Disable || len(s.HealthCheck.Test) < 2 {
		t.Errorf("service %s: no healthcheck", s.Name)
	}
}

func requireDependsOn(t *testing.T, s types.ServiceConfig, want map[string]string) {
	t.Helper()
	for dep, cond := range want {
		got, ok := s.DependsOn[dep]
		if !ok {
			t.Errorf("service %s does not depend on %s", s.Name, dep)
			continue
		}
		if got.Condition != cond {
			t.Errorf("service %s depends on %s with condition %q, want %q", s.Name, dep, got.Condition, cond)
		}
	}
}

// bindMounts maps container paths to existing host paths of s's bind mounts.
func bindMounts(t *testing.T, s types.ServiceConfig) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, v := range s.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		if _, err := os.Stat(v.Source); err != nil {
			t.Errorf("service %s mounts %s: %v", s.Name, v.Source, err)
		}
		m[v.Target] = v.Source
	}
	return m
}

// clearCDCEnv unsets (for the test) every variable config.Load reads.
func clearCDCEnv(t *testing.T) {
	t.Helper()
	for _, k := range config.Keys() {
		t.Setenv(config.EnvVar(k), "")
	}
}

func knownEnv() map[string]bool {
	m := map[string]bool{}
	for _, k := range config.Keys() {
		m[config.EnvVar(k)] = true
	}
	return m
}

// checkComposeEnv: every CDC_* variable names a configuration key.
func checkComposeEnv(t *testing.T, name string, s types.ServiceConfig) {
	t.Helper()
	known := knownEnv()
	for k := range s.Environment {
		if strings.HasPrefix(k, "CDC_") && !known[k] {
			t.Errorf("service %s: environment variable %s matches no configuration key", name, k)
		}
	}
}

// loadComposeConfig loads the configuration a compose service's environment
// gives, its secrets read from the files compose would mount at
// /run/secrets/<name>.
func loadComposeConfig(t *testing.T, p *types.Project, s types.ServiceConfig) *config.Config {
	t.Helper()
	clearCDCEnv(t)
	mounted := map[string]string{}
	for _, ref := range s.Secrets {
		target := ref.Target
		if target == "" {
			target = ref.Source
		}
		sec, ok := p.Secrets[ref.Source]
		if !ok || sec.File == "" {
			t.Fatalf("service %s: secret %s is not a top-level secret with a file", s.Name, ref.Source)
		}
		if !path.IsAbs(target) { // the loader may have made it absolute already
			target = path.Join("/run/secrets", target)
		}
		mounted[target] = sec.File
	}
	for k, v := range s.Environment {
		if strings.HasPrefix(k, "CDC_") && v != nil {
			val := *v
			if strings.HasSuffix(k, "_FILE") && val != "" {
				file, ok := mounted[val]
				if !ok {
					t.Fatalf("service %s: %s=%s is not a secret compose mounts", s.Name, k, val)
				}
				val = file
			}
			t.Setenv(k, val)
		}
	}
	cfg, err := config.Load("")
	if err != nil {
		t.Fatalf("service %s: its CDC_* environment does not load: %v", s.Name, err)
	}
	return cfg
}

// decodeYAML decodes the YAML file at path into v (unknown fields ignored).
func decodeYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// ---------------------------------------------------------------------------
// systemd

type unitFile map[string][][2]string // section -> key/value pairs in order

func parseUnit(t *testing.T, data []byte) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Fatalf("cdc.service line %d: not key=value in a section: %q", n, line)
		}
		u[section] = append(u[section], [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
	}
	return u
}

// values returns every value of key in section.
func (u unitFile) values(section, key string) []string {
	var out []string
	for _, kv := range u[section] {
		if kv[0] == key {
			out = append(out, kv[1])
		}
	}
	return out
}

// last returns the effective (last) value of key and whether it is set.
func (u unitFile) last(section, key string) (string, bool) {
	v := u.values(section, key)
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

const unitExecStart = "/usr/local/bin/cdc run --config /etc/cdc/config.yaml"

func TestSystemdUnit(t *testing.T) {
	data := readFile(t, "deploy", "systemd", "cdc.service")
	u := parseUnit(t, data)

	want := map[string]string{
		"Type":                  "simple",
		"ExecStart":             unitExecStart,
		"Restart":               "on-failure",
		"EnvironmentFile":       "-/etc/cdc/cdc.env",
		"KillSignal":            "SIGTERM",
		"ProtectSystem":         "strict",
		"ProtectHome":           "yes",
		"NoNewPrivileges":       "yes",
		"PrivateTmp":            "yes",
		"CapabilityBoundingSet": "",
	}
	for k, v := range want {
		got, ok := u.last("Service", k)
		if !ok {
			t.Errorf("cdc.service: [Service] %s= is missing (want %q)", k, v)
		} else if got != v {
			t.Errorf("cdc.service: %s=%s, want %s", k, got, v)
		}
	}
	if dyn, _ := u.last("Service", "DynamicUser"); dyn != "yes" {
		if user, ok := u.last("Service", "User"); !ok || user == "root" || user == "0" {
			t.Error("cdc.service: want DynamicUser=yes or a dedicated User=")
		}
	}
	// Secrets come as systemd credentials, read through the _file keys.
	creds := map[string]bool{}
	for _, lc := range u.values("Service", "LoadCredential") {
		name, src, ok := strings.Cut(lc, ":")
		if !ok || !strings.HasPrefix(src, "/etc/cdc/") {
			t.Errorf("cdc.service: LoadCredential=%s, want NAME:/etc/cdc/…", lc)
		}
		creds[name] = true
	}
	envs := map[string]string{}
	for _, e := range u.values("Service", "Environment") {
		k, v, _ := strings.Cut(e, "=")
		envs[k] = v
	}
	for _, key := range []string{"postgres.url_file", "clickhouse.password_file"} {
		v, ok := envs[config.EnvVar(key)]
		name, isCred := strings.CutPrefix(v, "%d/")
		if !ok || !isCred || !creds[name] {
			t.Errorf("cdc.service: want Environment=%s=%%d/NAME with LoadCredential=NAME:…, got %q", config.EnvVar(key), v)
		}
	}
	fams, _ := u.last("Service", "RestrictAddressFamilies")
	gotFams := strings.Fields(fams)
	sort.Strings(gotFams)
	if !slices.Equal(gotFams, []string{"AF_INET", "AF_INET6", "AF_UNIX"}) {
		t.Errorf("cdc.service: RestrictAddressFamilies=%s, want AF_INET AF_INET6 AF_UNIX", fams)
	}
	if !slices.Contains(u.values("Service", "SystemCallFilter"), "@system-service") {
		t.Error("cdc.service: no SystemCallFilter=@system-service")
	}
	if mem, ok := u.last("Service", "MemoryMax"); !ok {
		t.Error("cdc.service: no MemoryMax=")
	} else if n, ok := strings.CutSuffix(mem, "M"); !ok {
		t.Errorf("cdc.service: MemoryMax=%s, want a number of M (MiB)", mem)
	} else {
		checkMemoryLimit(t, "cdc.service MemoryMax", n)
	}
	for _, env := range u.values("Service", "Environment") {
		if strings.Contains(env, "GOMEMLIMIT") {
			t.Errorf("cdc.service: Environment=%s: cdc sets its soft memory limit from batch.max_bytes; an override breaks the bound", env)
		}
	}
	stop, ok := u.last("Service", "TimeoutStopSec")
	if !ok {
		t.Fatal("cdc.service: no TimeoutStopSec=")
	}
	d, err := time.ParseDuration(strings.ReplaceAll(stop, "min", "m"))
	if err != nil {
		t.Fatalf("cdc.service: TimeoutStopSec=%s: %v", stop, err)
	}
	if grace := config.Default().Shutdown.Grace; d <= grace {
		t.Errorf("cdc.service: TimeoutStopSec=%s must exceed shutdown.grace (%s by default)", stop, grace)
	}
	if wb, _ := u.last("Install", "WantedBy"); wb != "multi-user.target" {
		t.Errorf("cdc.service: WantedBy=%s, want multi-user.target", wb)
	}

	// systemd-analyze verify: the unit as systemd itself parses it. It needs
	// ExecStart's binary to exist, so verify a copy that runs the binary
	// built by this test.
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not found: install Debian's package `systemd` (apt-get install -y systemd); " +
			"this test verifies deploy/systemd/cdc.service with it")
	}
	bin := cdcBinary(t)
	if !bytes.Contains(data, []byte("ExecStart="+unitExecStart)) {
		t.Fatalf("cdc.service: ExecStart line not found verbatim")
	}
	dir := t.TempDir()
	unit := filepath.Join(dir, "cdc.service")
	rewritten := bytes.Replace(data, []byte("ExecStart=/usr/local/bin/cdc "), []byte("ExecStart="+bin+" "), 1)
	if err := os.WriteFile(unit, rewritten, 0o644); err != nil {
		t.Fatal(err)
	}
	// Warnings (unknown keys, bad values) do not change the exit code:
	// any line about the unit fails the test.
	out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
	var problems []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.Contains(line, "cdc.service") {
			problems = append(problems, line)
		} else if line != "" {
			t.Logf("systemd-analyze verify: %s", line)
		}
	}
	if err != nil || len(problems) > 0 {
		t.Errorf("systemd-analyze verify cdc.service: %v\n%s", err, strings.Join(problems, "\n"))
	}
	// Report the hardening score (informational; it varies between versions).
	if out, err := exec.Command(analyze, "security", "--offline=true", "--no-pager", unit).CombinedOutput(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Logf("systemd-analyze security: %s", lines[len(lines)-1])
	}
}

// ---------------------------------------------------------------------------
// Kubernetes

type manifest struct {
	file string
	doc  map[string]any
}

func (m manifest) kind() string { return str(m.doc["kind"]) }
func (m manifest) name() string { return str(dig(m.doc, "metadata", "name")) }

func str(v any) string {
	if v == nil {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

// dig walks nested maps; nil when a key is missing.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func list(v any) []any {
	l, _ := v.([]any)
	return l
}

func strMap(v any) map[string]string {
	out := map[string]string{}
	m, _ := v.(map[string]any)
	for k, val := range m {
		out[k] = str(val)
	}
	return out
}

func loadManifests(t *testing.T) []manifest {
	t.Helper()
	files, err := filepath.Glob(repoPath("deploy", "k8s", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/k8s (%v)", err)
	}
	var out []manifest
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var doc map[string]any
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", filepath.Base(f), err)
			}
			if doc == nil {
				continue
			}
			m := manifest{file: filepath.Base(f), doc: doc}
			if str(doc["apiVersion"]) == "" || m.kind() == "" {
				t.Errorf("%s: a document without apiVersion/kind", m.file)
			}
			if m.kind() != "Kustomization" && m.name() == "" {
				t.Errorf("%s: %s without metadata.name", m.file, m.kind())
			}
			out = append(out, m)
		}
	}
	return out
}

func TestKubernetesManifests(t *testing.T) {
	all := loadManifests(t)
	byKind := map[string][]manifest{}
	for _, m := range all {
		byKind[m.kind()] = append(byKind[m.kind()], m)
	}
	one := func(kind, apiVersion string) manifest {
		t.Helper()
		ms := byKind[kind]
		if len(ms) != 1 {
			t.Fatalf("deploy/k8s: want exactly one %s, found %d", kind, len(ms))
		}
		if got := str(ms[0].doc["apiVersion"]); got != apiVersion {
			t.Errorf("%s %s: apiVersion %s, want %s", kind, ms[0].name(), got, apiVersion)
		}
		return ms[0]
	}
	dep := one("Deployment", "apps/v1")
	cm := one("ConfigMap", "v1")
	sec := one("Secret", "v1")
	pdb := one("PodDisruptionBudget", "policy/v1")
	svc := one("Service", "v1")
	kus := one("Kustomization", "kustomize.config.k8s.io/v1beta1")

	// kustomization.yaml lists every manifest but the example Secret.
	var resources []string
	for _, r := range list(kus.doc["resources"]) {
		resources = append(resources, str(r))
	}
	for _, m := range all {
		listed := slices.Contains(resources, m.file)
		switch {
		case m.file == "kustomization.yaml":
		case m.kind() == "Secret" && listed:
			t.Errorf("kustomization.yaml applies %s: placeholder credentials must not be applied", m.file)
		case m.kind() != "Secret" && !listed:
			t.Errorf("kustomization.yaml does not list %s", m.file)
		}
	}
	for _, r := range resources {
		if _, err := os.Stat(repoPath("deploy", "k8s", r)); err != nil {
			t.Errorf("kustomization.yaml: %v", err)
		}
	}

	spec := dig(dep.doc, "spec")
	if r := dig(spec, "replicas"); r != 2 {
		t.Errorf("Deployment replicas %v, want 2 (leader + hot standby)", r)
	}
	podLabels := strMap(dig(spec, "template", "metadata", "labels"))
	sel := strMap(dig(spec, "selector", "matchLabels"))
	if len(sel) == 0 {
		t.Error("Deployment: empty selector")
	}
	for k, v := range sel {
		if podLabels[k] != v {
			t.Errorf("Deployment selector %s=%s does not match the pod template labels %v", k, v, podLabels)
		}
	}
	// The standby never becomes Ready, so a rollout that waits for new pods
	// to be Ready before stopping old ones never finishes.
	strategy := dig(spec, "strategy")
	if str(dig(strategy, "type")) != "Recreate" && str(dig(strategy, "rollingUpdate", "maxUnavailable")) != "100%" {
		t.Errorf("Deployment strategy %v: with a never-Ready standby use Recreate or rollingUpdate.maxUnavailable 100%%", strategy)
	}
	pod := dig(spec, "template", "spec")
	ann := strMap(dig(spec, "template", "metadata", "annotations"))
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "9187" || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("pod annotations %v: want prometheus.io/scrape true, port 9187, path /metrics", ann)
	}
	if str(dig(pod, "securityContext", "runAsNonRoot")) != "true" {
		t.Error("pod securityContext.runAsNonRoot is not true")
	}
	containers := list(dig(pod, "containers"))
	if len(containers) != 1 {
		t.Fatalf("Deployment: want one container, found %d", len(containers))
	}
	c := containers[0]
	sc := dig(c, "securityContext")
	if str(dig(sc, "readOnlyRootFilesystem")) != "true" || str(dig(sc, "allowPrivilegeEscalation")) != "false" {
		t.Errorf("container securityContext %v: want readOnlyRootFilesystem true, allowPrivilegeEscalation false", sc)
	}
	drops := list(dig(sc, "capabilities", "drop"))
	if len(drops) != 1 || str(drops[0]) != "ALL" {
		t.Errorf("container capabilities.drop %v, want [ALL]", drops)
	}
	portName := ""
	for _, p := range list(dig(c, "ports")) {
		if dig(p, "containerPort") == 9187 {
			portName = str(dig(p, "name"))
		}
	}
	if portName == "" {
		t.Error("container: no containerPort 9187")
	}
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		get := dig(c, probe, "httpGet")
		p := str(dig(get, "port"))
		if str(dig(get, "path")) != path || (p != "9187" && p != portName) {
			t.Errorf("container %s %v: want httpGet %s on port 9187", probe, get, path)
		}
	}
	limits := strMap(dig(c, "resources", "limits"))
	requests := strMap(dig(c, "resources", "requests"))
	if mem, ok := strings.CutSuffix(limits["memory"], "Mi"); !ok {
		t.Errorf("container memory limit %q, want a number of Mi", limits["memory"])
	} else {
		checkMemoryLimit(t, "deployment.yaml limits.memory", mem)
	}
	for _, e := range list(dig(c, "env")) {
		if str(dig(e, "name")) == "GOMEMLIMIT" {
			t.Error("container env GOMEMLIMIT: cdc sets its soft memory limit from batch.max_bytes; an override breaks the bound")
		}
	}
	if requests["memory"] == "" || requests["cpu"] == "" {
		t.Errorf("container requests %v: want cpu and memory", requests)
	}
	known := knownEnv()
	for _, e := range list(dig(c, "env")) {
		if n := str(dig(e, "name")); strings.HasPrefix(n, "CDC_") && !known[n] {
			t.Errorf("container env %s matches no configuration key", n)
		}
	}
	// The Secret is mounted as files, and the _file keys name them.
	secretMount := ""
	for _, vm := range list(dig(c, "volumeMounts")) {
		for _, v := range list(dig(pod, "volumes")) {
			if str(dig(v, "name")) == str(dig(vm, "name")) && str(dig(v, "secret", "secretName")) == sec.name() {
				secretMount = str(dig(vm, "mountPath"))
			}
		}
	}
	if secretMount == "" {
		t.Errorf("the Secret %s is not mounted as files in the container", sec.name())
	}
	fileEnv := map[string]string{} // CDC_*_FILE -> the Secret's key it names
	for _, e := range list(dig(c, "env")) {
		n, v := str(dig(e, "name")), str(dig(e, "value"))
		if strings.HasPrefix(n, "CDC_") && strings.HasSuffix(n, "_FILE") {
			key, ok := strings.CutPrefix(v, secretMount+"/")
			if !ok || secretMount == "" {
				t.Errorf("container env %s=%s is not a file of the mounted Secret", n, v)
			}
			fileEnv[n] = key
		}
	}

	// The config file the pod reads: mounted from the ConfigMap, named by --config.
	var args []string
	for _, a := range list(dig(c, "args")) {
		args = append(args, str(a))
	}
	i := slices.Index(args, "--config")
	if len(args) == 0 || args[0] != "run" || i < 0 || i+1 >= len(args) {
		t.Fatalf("container args %v: want run --config FILE", args)
	}
	configPath := args[i+1]
	mounted := false
	for _, vm := range list(dig(c, "volumeMounts")) {
		if filepath.Join(str(dig(vm, "mountPath")), "config.yaml") != configPath {
			continue
		}
		for _, v := range list(dig(pod, "volumes")) {
			if str(dig(v, "name")) == str(dig(vm, "name")) && str(dig(v, "configMap", "name")) == cm.name() {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Errorf("%s is not the ConfigMap %s's config.yaml mounted in the container", configPath, cm.name())
	}

	// The Secret's keys are configuration variables; with them the
	// ConfigMap's config.yaml loads.
	secretData := strMap(dig(sec.doc, "stringData"))
	secretDir := t.TempDir()
	clearCDCEnv(t)
	for _, n := range []string{"CDC_POSTGRES_URL_FILE", "CDC_CLICKHOUSE_PASSWORD_FILE"} {
		key, ok := fileEnv[n]
		if !ok {
			t.Errorf("container env: no %s", n)
			continue
		}
		if secretData[key] == "" {
			t.Errorf("%s names %s, which the Secret %s does not have", n, key, sec.name())
			continue
		}
		// The file as the kubelet would write it, where this test can.
		p := filepath.Join(secretDir, key)
		if err := os.WriteFile(p, []byte(secretData[key]), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv(n, p)
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, []byte(str(dig(cm.doc, "data", "config.yaml"))), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatalf("ConfigMap %s config.yaml does not load: %v", cm.name(), err)
	}
	if cfg.HTTP.Listen != "0.0.0.0:9187" {
		t.Errorf("ConfigMap http.listen %s, want 0.0.0.0:9187 (probes and Prometheus come from outside the pod)", cfg.HTTP.Listen)
	}
	tg, _ := dig(pod, "terminationGracePeriodSeconds").(int)
	if time.Duration(tg)*time.Second <= cfg.Shutdown.Grace {
		t.Errorf("terminationGracePeriodSeconds %d must exceed shutdown.grace %s", tg, cfg.Shutdown.Grace)
	}

	// PodDisruptionBudget and Service select the pods.
	if dig(pdb.doc, "spec", "minAvailable") != 1 {
		t.Errorf("PodDisruptionBudget minAvailable %v, want 1", dig(pdb.doc, "spec", "minAvailable"))
	}
	for name, s := range map[string]map[string]string{
		"PodDisruptionBudget": strMap(dig(pdb.doc, "spec", "selector", "matchLabels")),
		"Service":             strMap(dig(svc.doc, "spec", "selector")),
	} {
		if len(s) == 0 {
			t.Errorf("%s: empty selector", name)
		}
		for k, v := range s {
			if podLabels[k] != v {
				t.Errorf("%s selector %s=%s does not match the pod labels", name, k, v)
			}
		}
	}
	if str(dig(svc.doc, "spec", "publishNotReadyAddresses")) != "true" {
		t.Error("Service: publishNotReadyAddresses should be true (the standby is never Ready but exports metrics)")
	}
	svcPort := false
	for _, p := range list(dig(svc.doc, "spec", "ports")) {
		tp := str(dig(p, "targetPort"))
		if dig(p, "port") == 9187 && (tp == "9187" || tp == portName) {
			svcPort = true
		}
	}
	if !svcPort {
		t.Error("Service: no port 9187 to the container's metrics port")
	}
}

// ---------------------------------------------------------------------------
// Grafana dashboard and Prometheus rules

// exportedMetrics returns the series names internal/metrics exposes
// (histograms and summaries as _bucket/_sum/_count too).
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	fams, err := metrics.New().All().Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range fams {
		n := f.GetName()
		names[n] = true
		switch f.GetType().String() {
		case "HISTOGRAM", "GAUGE_HISTOGRAM":
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case "SUMMARY":
			names[n+"_sum"], names[n+"_count"] = true, true
		}
	}
	return names
}

// prometheusBuiltins are series Prometheus itself adds to every target.
var prometheusBuiltins = map[string]bool{"up": true, "scrape_duration_seconds": true}

var promParser = parser.NewParser(parser.Options{})

// metricNames parses expr and returns the metric names it selects.
func metricNames(expr string) ([]string, error) {
	node, err := promParser.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && name == "" {
				name = m.Value
			}
		}
		names = append(names, name)
		return nil
	})
	return names, nil
}

// grafanaVars replaces Grafana's template variables so PromQL parses.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "${__rate_interval}", "5m",
	"$__interval", "1m", "${__interval}", "1m",
	"$__range", "1h", "${__range}", "1h",
	"$instance", ".*", "${instance}", ".*",
	"$job", ".*", "${job}", ".*",
)

func TestGrafanaDashboard(t *testing.T) {
	var dash map[string]any
	if err := json.Unmarshal(readFile(t, "deploy", "grafana", "cdc-dashboard.json"), &dash); err != nil {
		t.Fatalf("cdc-dashboard.json: %v", err)
	}
	if str(dash["uid"]) == "" || str(dash["title"]) == "" {
		t.Error("dashboard: no uid or title")
	}
	exported := exportedMetrics(t)
	used := map[string]bool{}
	var exprs []string
	ids := map[string]bool{}
	var walk func(panels []any)
	walk = func(panels []any) {
		for _, p := range panels {
			id := str(dig(p, "id"))
			if ids[id] {
				t.Errorf("dashboard: panel id %s used twice", id)
			}
			ids[id] = true
			walk(list(dig(p, "panels")))
			if str(dig(p, "type")) == "row" {
				continue
			}
			targets := list(dig(p, "targets"))
			if len(targets) == 0 {
				t.Errorf("dashboard panel %q has no query", str(dig(p, "title")))
			}
			for _, tg := range targets {
				exprs = append(exprs, str(dig(tg, "expr")))
			}
		}
	}
	walk(list(dash["panels"]))
	for _, e := range exprs {
		names, err := metricNames(grafanaVars.Replace(e))
		if err != nil {
			t.Errorf("dashboard expression %q does not parse: %v", e, err)
			continue
		}
		for _, n := range names {
			used[n] = true
			if !exported[n] && !prometheusBuiltins[n] {
				t.Errorf("dashboard expression %q uses %s, which internal/metrics does not export", e, n)
			}
		}
	}
	// Template variables query cdc's own series too.
	for _, v := range list(dig(dash, "templating", "list")) {
		q := str(dig(v, "definition"))
		if m := regexp.MustCompile(`label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)`).FindStringSubmatch(q); m != nil && !exported[m[1]] {
			t.Errorf("dashboard variable %s queries %s, which internal/metrics does not export", str(dig(v, "name")), m[1])
		}
	}
	for _, want := range []string{
		"cdc_rows_flushed_total", "cdc_flush_duration_seconds_bucket", "cdc_batch_rows_bucket",
		"cdc_slot_lag_bytes", "cdc_slot_retained_wal_bytes", "cdc_buffer_rows", "cdc_flush_errors_total",
		"cdc_rows_failed_total", "cdc_replication_connected", "cdc_leader",
		"cdc_outbox_pending_rows", "cdc_outbox_failed_rows", "cdc_outbox_oldest_pending_age_seconds",
	} {
		if !used[want] {
			t.Errorf("dashboard: no panel shows %s", want)
		}
	}
	joined := strings.Join(exprs, "\n")
	for _, want := range []string{"rate(cdc_rows_flushed_total", "histogram_quantile(0.99, sum by (le) (rate(cdc_flush_duration_seconds_bucket"} {
		if !strings.Contains(joined, want) {
			t.Errorf("dashboard: no expression contains %q", want)
		}
	}
}

func TestAlertRules(t *testing.T) {
	path := repoPath("deploy", "prometheus", "alerts.yml")
	groups, errs := rulefmt.ParseFile(path, false, model.UTF8Validation, promParser, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatalf("alerts.yml: %v", errors.Join(errs...))
	}
	// rulefmt cannot tell a missing `for:` from `for: 0m`: read the YAML too.
	var raw struct {
		Groups []struct {
			Rules []map[string]any `yaml:"rules"`
		} `yaml:"groups"`
	}
	decodeYAML(t, path, &raw)
	exported := exportedMetrics(t)
	used := map[string]bool{}
	alerts := 0
	for gi, g := range groups.Groups {
		for ri, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s rule %d: not an alerting rule", g.Name, ri)
				continue
			}
			alerts++
			if _, ok := raw.Groups[gi].Rules[ri]["for"]; !ok {
				t.Errorf("alert %s: no `for:`", r.Alert)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("alert %s: labels.severity %q, want warning or critical", r.Alert, s)
			}
			if r.Annotations["summary"] == "" {
				t.Errorf("alert %s: no annotations.summary", r.Alert)
			}
			names, err := metricNames(r.Expr)
			if err != nil {
				t.Errorf("alert %s: %v", r.Alert, err)
				continue
			}
			for _, n := range names {
				used[n] = true
				if !exported[n] && !prometheusBuiltins[n] {
					t.Errorf("alert %s uses %s, which internal/metrics does not export", r.Alert, n)
				}
			}
		}
	}
	if alerts == 0 {
		t.Fatal("alerts.yml has no alerts")
	}
	// What the alerts must watch: lag, stalled delivery, failed rows, the
	// stream, the leader, a lost slot.
	for _, want := range []string{
		"cdc_slot_lag_bytes", "cdc_last_flush_timestamp_seconds", "cdc_rows_failed_total",
		"cdc_replication_connected", "cdc_leader", "cdc_slot_lost", "cdc_outbox_oldest_pending_age_seconds", "up",
	} {
		if !used[want] {
			t.Errorf("alerts.yml: no alert uses %s", want)
		}
	}
}

func TestPrometheusKubernetesScrape(t *testing.T) {
	var cfg struct {
		ScrapeConfigs []struct {
			JobName string           `yaml:"job_name"`
			SD      []map[string]any `yaml:"kubernetes_sd_configs"`
			Relabel []struct {
				SourceLabels []string `yaml:"source_labels"`
				Regex        string   `yaml:"regex"`
				Action       string   `yaml:"action"`
			} `yaml:"relabel_configs"`
		} `yaml:"scrape_configs"`
	}
	decodeYAML(t, repoPath("deploy", "prometheus", "kubernetes-scrape.yml"), &cfg)
	if len(cfg.ScrapeConfigs) != 1 || cfg.ScrapeConfigs[0].JobName == "" || len(cfg.ScrapeConfigs[0].SD) == 0 {
		t.Fatalf("kubernetes-scrape.yml: want one job with kubernetes_sd_configs, got %+v", cfg.ScrapeConfigs)
	}
	for _, r := range cfg.ScrapeConfigs[0].Relabel {
		if r.Regex == "" {
			continue
		}
		if _, err := regexp.Compile("^(?:" + r.Regex + ")$"); err != nil {
			t.Errorf("kubernetes-scrape.yml: relabel regex %q: %v", r.Regex, err)
		}
	}
}

// ---------------------------------------------------------------------------
// docs

// defaultText renders key's value in config.Default() as the docs write it.
func defaultText(t *testing.T, cfg *config.Config, key string) string {
	t.Helper()
	section, name, ok := strings.Cut(key, ".")
	if !ok {
		t.Fatalf("key %q has no section", key)
	}
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }
	find := func(v reflect.Value, want string) (reflect.Value, bool) {
		var prefixed []reflect.Value
		for i := 0; i < v.NumField(); i++ {
			n := norm(v.Type().Field(i).Name)
			if n == norm(want) {
				return v.Field(i), true
			}
			if strings.HasPrefix(n, norm(want)) {
				prefixed = append(prefixed, v.Field(i))
			}
		}
		if len(prefixed) == 1 { // e.g. batch.queue -> QueueBatches
			return prefixed[0], true
		}
		return reflect.Value{}, false
	}
	sv, ok := find(reflect.ValueOf(*cfg), section)
	if !ok {
		t.Fatalf("config.Config has no field for section %q (update defaultText)", section)
	}
	// A nested group such as clickhouse.tls.ca_file is a struct field.
	fv := sv
	for _, part := range strings.Split(name, ".") {
		next, ok := find(fv, part)
		if !ok {
			t.Fatalf("config.Config.%s has no field for key %q (update defaultText)", fv.Type().Name(), key)
		}
		fv = next
	}
	switch v := fv.Interface().(type) {
	case time.Duration:
		return v.String()
	case []string:
		return strings.Join(v, ",")
	case string:
		return v
	default:
		return fmt.Sprint(v)
	}
}

var docRowRE = regexp.MustCompile("^\\|\\s*`([a-z_]+(?:\\.[a-z_]+)+)`\\s*\\|")

// docRows maps each `section.key` in the first column of a table to its cells.
func docRows(doc string) map[string][]string {
	rows := map[string][]string{}
	for _, line := range strings.Split(doc, "\n") {
		m := docRowRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows[m[1]] = cells
	}
	return rows
}

func TestConfigurationDoc(t *testing.T) {
	doc := string(readFile(t, "docs", "configuration.md"))
	rows := docRows(doc)
	def := config.Default()
	keys := config.Keys()
	for _, key := range keys {
		cells, ok := rows[key]
		if !ok {
			t.Errorf("docs/configuration.md: no table row | `%s` | … for configuration key %s", key, key)
			continue
		}
		if len(cells) < 4 {
			t.Errorf("docs/configuration.md %s: want | key | env | default | description |", key)
			continue
		}
		if want := "`" + config.EnvVar(key) + "`"; cells[1] != want {
			t.Errorf("docs/configuration.md %s: env column %q, want %s", key, cells[1], want)
		}
		want := defaultText(t, def, key)
		got := cells[2]
		if want == "" {
			if strings.HasPrefix(got, "`") {
				t.Errorf("docs/configuration.md %s: default column %q; the default is empty: write (empty) or (required)", key, got)
			}
		} else if !strings.HasPrefix(got, "`"+want+"`") {
			t.Errorf("docs/configuration.md %s: default column %q, want it to start with `%s` (config.Default())", key, got, want)
		}
	}
	for key := range rows {
		if !slices.Contains(keys, key) {
			t.Errorf("docs/configuration.md documents %s, which is not a configuration key", key)
		}
	}

	// config.example.yaml shows every key with its default (postgres.url,
	// required, has an example value instead).
	var example map[string]map[string]any
	if err := yaml.Unmarshal(readFile(t, "config.example.yaml"), &example); err != nil {
		t.Fatalf("config.example.yaml: %v", err)
	}
	// Nested groups (clickhouse.tls) are flattened to dotted keys.
	flat := map[string]any{}
	var flatten func(prefix string, m map[string]any)
	flatten = func(prefix string, m map[string]any) {
		for name, v := range m {
			if sub, ok := v.(map[string]any); ok {
				flatten(prefix+name+".", sub)
				continue
			}
			flat[prefix+name] = v
		}
	}
	for section, kv := range example {
		flatten(section+".", kv)
	}
	seen := map[string]bool{}
	{
		for key, v := range flat {
			seen[key] = true
			if !slices.Contains(keys, key) {
				t.Errorf("config.example.yaml: %s is not a configuration key", key)
				continue
			}
			if key == "postgres.url" {
				continue
			}
			got := fmt.Sprint(v)
			if l, ok := v.([]any); ok {
				parts := make([]string, len(l))
				for i := range l {
					parts[i] = fmt.Sprint(l[i])
				}
				got = strings.Join(parts, ",")
			}
			if want := defaultText(t, def, key); got != want {
				t.Errorf("config.example.yaml: %s is %q, but its default is %q", key, got, want)
			}
		}
	}
	for _, key := range keys {
		if !seen[key] {
			t.Errorf("config.example.yaml does not show %s", key)
		}
	}
}

var mdLinkRE = regexp.MustCompile(`\]\(([^)\s]+)\)`)

func TestDocs(t *testing.T) {
	files, err := filepath.Glob(repoPath("docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mdLinkRE.FindAllStringSubmatch(string(b), -1) {
			link := m[1]
			if strings.Contains(link, "://") || strings.HasPrefix(link, "#") || strings.HasPrefix(link, "mailto:") {
				continue
			}
			link, _, _ = strings.Cut(link, "#")
			if _, err := os.Stat(filepath.Join(filepath.Dir(f), link)); err != nil {
				t.Errorf("%s: broken link %s", filepath.Base(f), m[1])
			}
		}
	}
	// What each document must cover (the issue that asked for them).
	must := map[string][]string{
		"operations.md": {"cdc status", "max_slot_wal_keep_size", "pg_drop_replication_slot('cdc_outbox')",
			"cdc retry-failed", "failed.retry_interval", "failed.max_attempts", "cdc migrate", "Celery",
			"postgres.failover_slot", "sync_replication_slots", "synchronized_standby_slots", "hot_standby_feedback", "primary_slot_name"},
		"producers.md":     {"pgx", "transaction.atomic", "BEGIN"},
		"scaling.md":       {"postgres.slot", "postgres.publication", "ReplicatedMergeTree", "Distributed", "failover = true", "sync_replication_slots", "_lsn", "_seq"},
		"security.md":      {"sslmode=verify-full", "REPLICATION", "UPDATE (status, updated_at, last_error, attempts)", "GRANT INSERT, SELECT"},
		"configuration.md": {"CDC_POSTGRES_URL", "config.example.yaml"},
	}
	for name, phrases := range must {
		b, err := os.ReadFile(repoPath("docs", name))
		if err != nil {
			t.Errorf("docs/%s: %v", name, err)
			continue
		}
		for _, p := range phrases {
			if !strings.Contains(string(b), p) {
				t.Errorf("docs/%s does not mention %q", name, p)
			}
		}
	}
}
