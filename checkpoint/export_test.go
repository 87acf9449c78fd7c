package checkpoint

// Exported for the tests of package checkpoint_test.
var (
	SplitRuns          = splitRuns
	MarkProcessedQuery = markProcessedQuery
)
