"""Model components: visual encoder, text encoder, fusion, decoder, selectors."""
