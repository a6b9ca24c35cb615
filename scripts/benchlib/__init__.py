"""The pieces of `scripts/bench` (the entry point): shared helpers (`common`, `fake`,
`machine`), one module per benchmark (`b1` with B1r/B1-diag/B4, `b2`, `b3`, `b5` running
`routing`, `b6`, `b7`) and the report (`report`). Standard library only."""
