function (doc) {
  if (doc.type === 'task') {
    emit([doc.record, doc.state], 1);
  }
}
