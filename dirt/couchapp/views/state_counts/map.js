function (doc) {
  if (doc.type === 'task') {
    emit(doc.state, 1);
  }
}
