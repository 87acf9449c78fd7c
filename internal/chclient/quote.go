package chclient

import "strings"

// QuoteIdent quotes a ClickHouse identifier (a database, table, column or
// cluster name) for a statement: in backquotes, with backslash and backquote
// escaped by a backslash, as ClickHouse's lexer reads them. Backslashes go
// first, so the backslash escaping a backquote is not doubled. It is the one
// quoter every package uses, so a name that works for `cdc migrate` works
// for the sink, `cdc status` and `cdc verify` alike.
func QuoteIdent(name string) string {
	return "`" + strings.ReplaceAll(strings.ReplaceAll(name, `\`, `\\`), "`", "\\`") + "`"
}
