"""What is fitted once and cached before RL, at the edge: SFT reference policies per competence
point (`references`) and learned proxy reward models (`proxy`)."""
