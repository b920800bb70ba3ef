"""Research laboratories of the signal-rich-window paper: closed forms (:mod:`.theory`),
the k-parity laboratory (:mod:`.parity`) and n-gram window prediction (:mod:`.ngram`)."""
