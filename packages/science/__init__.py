"""forecache.science: molecular flow matching with Adams-Bashforth feature forecasting and an
offline chemistry evaluation suite. Builds on forecache.core; nothing is implemented here yet."""
