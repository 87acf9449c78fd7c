package checkpoint

// Exported for the tests of package checkpoint_test.
var (
	SplitRuns          = splitRuns
	MarkProcessedQuery = markProcessedQuery
)

// WidenXid is widenXid, for its table test.
var WidenXid = widenXid
