package main

// The docs' reference tables are checked against the code here (config keys,
// their variables and defaults against internal/config are checked in
// deploy/deploy_test.go TestConfigurationDoc, alert and dashboard metric
// names in TestAlertRules and TestGrafanaDashboard):
//
//   - every metric a running `cdc run` serves on /metrics is in a metric table
//     of the docs with its type, and every metric the docs list is served;
//   - every flag of every subcommand is documented, and every `cdc SUB --flag`
//     the docs show is a flag SUB has;
//   - every CDC_* variable the docs and deploy files name is a key's variable
//     or one that internal/config accepts.
//   - no document a user reads refers to the DESIGN.md the repository lacks.
//
// Prose stays a reviewer's job.

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/outbox-cdc/outbox-cdc/internal/config"
	"github.com/outbox-cdc/outbox-cdc/internal/testenv"
)

// docFiles are the documents a user reads: the README, docs/, the bench
// README and the deploy files' comments.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"../../README.md", "../../config.example.yaml", "../../docker-compose.yml", "../cdc-bench/README.md"}
	more, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, more...)
	err = filepath.WalkDir("../../deploy", func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasSuffix(path, ".go") {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func readDoc(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// docName is how failures name a file: relative to the repository.
func docName(path string) string { return strings.TrimPrefix(filepath.ToSlash(path), "../../") }

var metricRowRE = regexp.MustCompile("^\\|\\s*`(cdc_[a-z0-9_]+)`\\s*\\|\\s*([a-z]+)\\s*\\|")

// documentedMetrics maps each metric of a "| `cdc_x` | type | … |" table row
// in the Markdown files to its type and the file that lists it.
func documentedMetrics(t *testing.T) (types, where map[string]string) {
	types, where = map[string]string{}, map[string]string{}
	for _, f := range docFiles(t) {
		if !strings.HasSuffix(f, ".md") {
			continue
		}
		for _, line := range strings.Split(readDoc(t, f), "\n") {
			if m := metricRowRE.FindStringSubmatch(line); m != nil {
				if prev, ok := where[m[1]]; ok && types[m[1]] != m[2] {
					t.Errorf("%s lists %s as a %s, %s as a %s", prev, m[1], types[m[1]], docName(f), m[2])
				}
				types[m[1]], where[m[1]] = m[2], docName(f)
			}
		}
	}
	return types, where
}

var typeLineRE = regexp.MustCompile(`^# TYPE (cdc_[a-z0-9_]+) ([a-z]+)$`)

// TestDocsListTheLiveMetrics runs the real binary against the test servers,
// lets it deliver rows and a heartbeat (some gauges appear only then), and
// compares its /metrics with the docs' metric tables.
func TestDocsListTheLiveMetrics(t *testing.T) {
	bin := cdcBinary(t)
	o := testenv.NewOutbox(t)
	port := testenv.FreePort(t)
	env := append(withListen(o.Env(), port), "CDC_HEARTBEAT_INTERVAL=200ms", "CDC_VERIFY_INTERVAL=1s")
	startDaemon(t, bin, env, t.TempDir(), "docs")
	o.MustInsert(10, true)
	o.WaitCH(10, 60*time.Second)

	docTypes, where := documentedMetrics(t)
	var live map[string]string
	waitUntil(t, "every documented metric on /metrics", 30*time.Second, func() bool {
		code, body := httpGet(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
		if code != 200 {
			return false
		}
		live = map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(body))
		for sc.Scan() {
			if m := typeLineRE.FindStringSubmatch(sc.Text()); m != nil {
				live[m[1]] = m[2]
			}
		}
		for name := range docTypes {
			if _, ok := live[name]; !ok {
				return false
			}
		}
		return true
	})

	for _, name := range sortedKeys(live) {
		if docTypes[name] == "" {
			t.Errorf("/metrics serves %s (%s), which no metric table in the docs lists (README.md's table: | `%s` | %s | meaning |)", name, live[name], name, live[name])
		} else if docTypes[name] != live[name] {
			t.Errorf("%s lists %s as a %s; /metrics serves a %s", where[name], name, docTypes[name], live[name])
		}
	}
	for _, name := range sortedKeys(docTypes) {
		if _, ok := live[name]; !ok {
			t.Errorf("%s lists %s, which the running binary does not serve", where[name], name)
		}
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// subcommands returns each subcommand of the real command tree with the
// names of the flags it takes (its own, inherited and --config).
func subcommands() map[string][]string {
	flags := map[string][]string{}
	for _, c := range newRoot().Commands() {
		var names []string
		add := func(f *pflag.Flag) { names = append(names, f.Name) }
		c.Flags().VisitAll(add)
		c.InheritedFlags().VisitAll(add)
		flags[c.Name()] = names
	}
	return flags
}

var (
	codeSpanRE = regexp.MustCompile("`(cdc [a-z-]+[^`]*)`")
	cmdLineRE  = regexp.MustCompile(`(?:^|[\s$(])(cdc [a-z-]+.*)$`)
	flagRE     = regexp.MustCompile(`(?:^|\s|\[|\(|/)--([a-z][a-z0-9-]*)`)
)

// commandUses returns every `cdc SUB …` the Markdown file shows, in code
// spans and in the lines of code blocks.
func commandUses(doc string) []string {
	var uses []string
	inBlock := false
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inBlock = !inBlock
			continue
		}
		if inBlock {
			if m := cmdLineRE.FindStringSubmatch(line); m != nil {
				uses = append(uses, strings.SplitN(m[1], " #", 2)[0])
			}
			continue
		}
		for _, m := range codeSpanRE.FindAllStringSubmatch(line, -1) {
			uses = append(uses, m[1])
		}
	}
	return uses
}

// TestDocsFlagsMatchTheCommands checks the documented command lines against
// cobra: a flag shown with `cdc SUB` must be one of SUB's, and every flag of
// every subcommand must be documented somewhere.
func TestDocsFlagsMatchTheCommands(t *testing.T) {
	cmds := subcommands()
	var all strings.Builder
	for _, f := range docFiles(t) {
		if !strings.HasSuffix(f, ".md") {
			continue
		}
		doc := readDoc(t, f)
		all.WriteString(doc)
		for _, use := range commandUses(doc) {
			sub := strings.Fields(use)[1]
			flags, ok := cmds[sub]
			if !ok {
				// Prose ("cdc streams"), log lines and other tools'
				// arguments ("journalctl -u cdc -f") are not command lines;
				// a word followed by flags is.
				if strings.Contains(use, " --") && !strings.HasPrefix(sub, "-") {
					t.Errorf("%s shows %q: cdc has no subcommand %q", docName(f), use, sub)
				}
				continue
			}
			for _, m := range flagRE.FindAllStringSubmatch(use, -1) {
				if !slices.Contains(flags, m[1]) && m[1] != "help" {
					t.Errorf("%s shows %q: cdc %s has no flag --%s (it has --%s)", docName(f), use, sub, m[1], strings.Join(flags, ", --"))
				}
			}
		}
	}
	docs := all.String()
	for _, sub := range sortedSubs(cmds) {
		if !strings.Contains(docs, "cdc "+sub) {
			t.Errorf("no document shows `cdc %s`", sub)
		}
		for _, name := range cmds[sub] {
			if name == "help" || name == "config" {
				continue
			}
			if !regexp.MustCompile(`--` + regexp.QuoteMeta(name) + `\b`).MatchString(docs) {
				t.Errorf("cdc %s --%s is in no document (README.md's command table or docs/operations.md)", sub, name)
			}
		}
	}
}

func sortedSubs(m map[string][]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		if k != "help" && k != "completion" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// rejectedExample is the typo the docs show being rejected.
const rejectedExample = "CDC_BATCH_SISE"

var envNameRE = regexp.MustCompile(`\bCDC_[A-Z0-9_]*[A-Z0-9]\b`)

// TestDocsNameOnlyKnownVariables: a CDC_* variable a document or a deploy
// file names must work, since cdc rejects unknown ones at start. Group
// abbreviations such as CDC_BATCH_… and CDC_<SECTION>_<KEY> are not names.
func TestDocsNameOnlyKnownVariables(t *testing.T) {
	for _, f := range docFiles(t) {
		for i, line := range strings.Split(readDoc(t, f), "\n") {
			for _, loc := range envNameRE.FindAllStringIndex(line, -1) {
				name, rest := line[loc[0]:loc[1]], line[loc[1]:]
				if strings.HasPrefix(rest, "_") || strings.HasPrefix(rest, "…") || strings.HasPrefix(rest, "<") {
					continue // CDC_BATCH_…, CDC_RETRY_<KEY>
				}
				if name == rejectedExample {
					continue
				}
				if unknown := config.UnknownEnv([]string{name + "=x"}); len(unknown) > 0 {
					t.Errorf("%s line %d names %s, which cdc rejects: %v", docName(f), i+1, name, config.CheckEnv([]string{name + "=x"}))
				}
			}
		}
	}
}

// TestDocsStandAlone: the repository has no DESIGN.md, so no document a user
// reads may send them to one (docs/architecture.md lists the rules itself).
func TestDocsStandAlone(t *testing.T) {
	for _, f := range docFiles(t) {
		for i, line := range strings.Split(readDoc(t, f), "\n") {
			if strings.Contains(line, "DESIGN.md") {
				t.Errorf("%s line %d refers to DESIGN.md, which the repository does not have: %s", docName(f), i+1, strings.TrimSpace(line))
			}
		}
	}
}
